"""Find recipes, apply overrides, validate against the schema, and explain every mistake in one line."""
from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, PluginError, did_you_mean, unknown_choice
from .fields import check_values
from .schema import RunConfig
from .shipped import named_files
from .yamlfile import read_yaml

RECIPE_SUFFIX = ".yaml"


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


def load_config(args: dict[str, Any], saved: Path | None = None) -> DictConfig:
    """The run config: schema defaults <- saved config (on resume) <- recipe <- ``key=value`` overrides."""
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
