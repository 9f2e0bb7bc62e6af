"""Find recipes, apply overrides, validate against the schema, and explain every mistake in one line."""
from __future__ import annotations

import logging
from dataclasses import is_dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, PluginError, did_you_mean, unknown_choice
from .fields import check_values
from .schema import PRECISIONS, RunConfig
from .shipped import named_files
from .yamlfile import read_yaml

RECIPE_SUFFIX = ".yaml"
PRECISION_NAMES = {"no": "fp32"}
log = logging.getLogger("vaeforge.config")


def available_recipes() -> dict[str, Path]:
    """Recipe name -> file: ./recipes, then the recipes shipped with vaeforge (first match wins)."""
    return named_files("recipes", "vaeforge.recipes", RECIPE_SUFFIX)


def _recipe_path(name: str) -> Path:
    if name.endswith(RECIPE_SUFFIX) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"recipe file '{name}' not found")
        return path
    recipes = available_recipes()
    if name not in recipes:
        raise unknown_choice("recipe", name, recipes)
    return recipes[name]


def load_recipe(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe as plain data; ``base: other`` inherits ``other`` and overrides it key by key."""
    if name in _seen:
        raise ConfigError(f"recipe '{name}' inherits from itself ({' -> '.join(_seen + (name,))})")
    data = read_yaml(_recipe_path(name), "recipe")
    if isinstance(data.get("by_precision"), dict):  # dotted keys, so that a replaced plugin's can be dropped
        data["by_precision"] = {p: flatten(v) if isinstance(v, dict) else v for p, v in data["by_precision"].items()}
    base = data.pop("base", None)
    if base is None:
        return data
    inherited = OmegaConf.create(load_recipe(str(base), _seen + (name,)))
    _drop_args_of_replaced_plugins(inherited, {k: v for k, v in flatten(data).items() if k.endswith(".name")})
    merged = OmegaConf.merge(inherited, data)
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists are values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def check_keys(schema: DictConfig, dotted_keys: list[str], where: str) -> None:
    """Fail on any key that the schema does not declare, naming the valid keys at that level."""
    for dotted in dotted_keys:
        node: Any = schema
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break
            if node._is_none():
                break  # an optional mapping left null (by_precision): checked by its own rules
            is_open_dict = OmegaConf.get_type(node) is dict
            if part not in node.keys():
                if is_open_dict:
                    break  # e.g. losses.<term> or plugin args: checked by their own schema later
                at = ".".join(parts[:depth]) or "top level"
                raise ConfigError(
                    f"unknown key '{dotted}' in {where} (at {at}: {did_you_mean(part, node.keys())})"
                )
            node = node._get_node(part)


def merge(base: DictConfig, update: dict[str, Any] | DictConfig, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"bad value for '{key}' in {where}: {msg}") from None


def overrides_as_tree(overrides: dict[str, Any]) -> DictConfig:
    tree = OmegaConf.create()
    for key, value in overrides.items():
        OmegaConf.update(tree, key, value, force_add=True)
    return tree


def _drop_args_of_replaced_plugins(cfg: DictConfig, overrides: dict[str, Any]) -> None:
    """``model.backbone.name=other`` (or ``losses.T.name=other``), in an override or a recipe over its base,
    starts from empty args: the args there were written for the plugin being replaced."""
    for key, value in overrides.items():
        if not key.endswith(".name"):
            continue
        spec = OmegaConf.select(cfg, key[: -len(".name")])
        if isinstance(spec, DictConfig) and "args" in spec and spec.get("name") not in (None, value):
            spec.args = {}
            _drop_by_precision_keys(cfg, [key[: -len(".name")] + ".args"])


def _drop_by_precision_keys(cfg: DictConfig, keys: list[str]) -> None:
    """Remove from every ``by_precision`` entry the settings at, under or above any of ``keys`` (dotted)."""
    for settings in (cfg.get("by_precision") or {}).values():
        for dotted in [k for k in settings if any(k == a or k.startswith(a + ".") or a.startswith(k + ".")
                                                  for a in keys)]:
            del settings[dotted]


def load_config(args: dict[str, Any], saved: Path | None = None,
                precision: Callable[[DictConfig], str] | None = None) -> DictConfig:
    """The run config: schema defaults <- saved config (on resume) <- recipe <- ``key=value`` overrides.
    ``precision`` (the config -> the precision it trains in on this machine) applies ``by_precision`` for a
    training; without it the settings stay for the machine that trains."""
    cfg: DictConfig = OmegaConf.structured(RunConfig)
    if saved is not None:
        cfg = merge(cfg, read_yaml(saved, "run config"), str(saved))
    recipe = args.get("recipe")
    if recipe:
        data = load_recipe(str(recipe))
        check_keys(cfg, list(flatten(data)), f"recipe '{recipe}'")
        cfg = merge(cfg, data, f"recipe '{recipe}'")
    elif saved is None:
        raise ConfigError(f"no recipe given: pass recipe=NAME ({did_you_mean('', available_recipes())})")
    check_keys(cfg, list(args), "overrides")
    _drop_args_of_replaced_plugins(cfg, args)
    cfg = merge(cfg, overrides_as_tree(args), "overrides")
    for term, spec in cfg.losses.items():
        if spec.name == "???":
            raise ConfigError(f"loss term '{term}' has no name: set losses.{term}.name")
    if not cfg.run_dir:
        cfg.run_dir = str(Path("runs") / Path(str(cfg.recipe)).stem)
    _settle_by_precision(cfg, args)
    if precision is not None and cfg.by_precision:
        cfg = apply_by_precision(cfg, precision(cfg))
    return cfg


def _settle_by_precision(cfg: DictConfig, args: dict[str, Any]) -> None:
    """``by_precision`` in dotted keys (the command line's ``by_precision.no.a.b=1`` came as a tree), checked,
    without the keys the command line set: it wins over the recipe's settings for any precision."""
    if cfg.by_precision:
        cfg.by_precision = {name: flatten(OmegaConf.to_container(settings)) if settings else {}
                            for name, settings in cfg.by_precision.items()}
    _check_by_precision(cfg)
    _drop_by_precision_keys(cfg, list(args))


def _check_by_precision(cfg: DictConfig) -> None:
    """``by_precision``'s precisions and keys are checked wherever a config loads, not only where it trains."""
    for name, settings in (cfg.by_precision or {}).items():
        if name in ("fp32", "float32"):
            raise ConfigError(f"by_precision.{name}: fp32 is called 'no' there, as in trainer.mixed_precision=no")
        if name not in PRECISIONS[1:]:
            raise unknown_choice("by_precision key", name, PRECISIONS[1:])
        flat = flatten(OmegaConf.to_container(settings))
        check_keys(cfg, list(flat), f"by_precision.{name}")
        if any(key.split(".")[0] == "by_precision" for key in flat):
            raise ConfigError(f"by_precision.{name} cannot set by_precision")
        merge(cfg, overrides_as_tree(flat), f"by_precision.{name}")  # the values' types, on a machine of any kind


def apply_by_precision(cfg: DictConfig, precision: str) -> DictConfig:
    """``cfg`` with the settings of ``by_precision.<precision>`` applied and ``by_precision`` cleared, so that
    the saved config says what ran."""
    if not cfg.by_precision:
        return cfg
    _check_by_precision(cfg)
    settings = flatten(OmegaConf.to_container(cfg.by_precision.get(precision) or OmegaConf.create()))
    cfg = merge(cfg, overrides_as_tree(settings), f"by_precision.{precision}")
    cfg.by_precision = None
    if settings:
        log.info(f"training in {PRECISION_NAMES.get(precision, precision)}, so by_precision.{precision}: "
                 + " ".join(f"{k}={v}" for k, v in settings.items()))
    return cfg


def validate_options(config_cls: type | None, args: Any, where: str) -> Any:
    """Options (a plugin's arguments, a verb's ``key=value`` arguments) checked against their config dataclass:
    keys, types, required fields and declared ranges; returns an instance of it. Dotted keys
    (``prior_args.components=4`` on a command line) set nested options."""
    args = OmegaConf.to_container(args) if isinstance(args, DictConfig) else dict(args or {})
    args = {key: str(value) if isinstance(value, Path) else value for key, value in args.items()}  # Python callers
    if any("." in key for key in args):
        args = OmegaConf.to_container(overrides_as_tree(args))
    if config_cls is None:
        if args:
            raise ConfigError(f"{where} takes no arguments, got: {', '.join(sorted(args))}")
        return None
    assert is_dataclass(config_cls)
    try:
        schema = OmegaConf.structured(config_cls)
    except (OmegaConfBaseException, ValueError) as exc:
        raise PluginError(f"{where}: its config dataclass {config_cls.__name__} cannot be a config "
                          f"({str(exc).splitlines()[0]}): give each field a type among int, float, str, bool, "
                          "Optional, List or Dict of those, and a default of that type") from None
    check_keys(schema, list(flatten(args)), where)
    merged = merge(schema, _scalars_as_lists(schema, args), where)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{where}: missing required option(s): {', '.join(f'{key}=...' for key in missing)}")
    options = OmegaConf.to_object(merged)
    check_values(options, f"{where}: ")
    return options


def _scalars_as_lists(schema: DictConfig, args: dict[str, Any]) -> dict[str, Any]:
    """``plugins=mod`` on a command line means ``plugins=[mod]``: a single value given for a list option."""
    out = {}
    for key, value in args.items():
        node = schema._get_node(key)
        if isinstance(value, dict) and isinstance(node, DictConfig):
            value = _scalars_as_lists(node, value)
        elif isinstance(node, ListConfig) and value is not None and not isinstance(value, (list, tuple)):
            value = [value]
        out[key] = value
    return out


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config (what actually ran) next to the run's checkpoints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
