"""``python -m vaeforge.train recipe=NAME [key=value ...]`` (also under ``accelerate launch -m``)."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from ..cli.logs import entry_point
from ..cli.options import help_text, read_args
from ..config import RunConfig, load_config, validate_options
from ..config.fields import check_values
from ..config.yamlfile import read_yaml
from ..data.sources import refuse_saved_command
from ..registry import REGISTRY, named_modules_hint
from ..runs.layout import CONFIG_FILE

log = logging.getLogger("vaeforge.train")  # by name: under vaeforge's also when run as __main__ (python -m)


ABOUT = "Train a recipe; several processes: accelerate launch [--multi_gpu --num_processes N] -m vaeforge.train ..."
USAGE = "vaeforge train recipe=NAME [key=value ...] | vaeforge train run_dir=DIR resume=true"
DATA_SOURCES = ("data.shards", "data.manifest")  # may be pipe: commands


def resolve_config(args: dict):
    """The run config from parsed ``key=value`` arguments; on ``resume=true`` the run's saved config is the base."""
    saved = None
    if args.get("resume") and args.get("run_dir"):
        candidate = Path(str(args["run_dir"])) / CONFIG_FILE
        saved = candidate if candidate.is_file() else None
    cfg = load_config(args, saved=saved, precision=_precision_here)
    # a run folder is data: modules only its saved config names are not imported, nor its data commands run
    # (the user passes them again)
    folder = OmegaConf.create(read_yaml(saved, "run config")) if saved else OmegaConf.create()
    _refuse_folder_commands(cfg, folder, args)
    asked = list(args.get("plugins") or [])
    modules = [m for m in cfg.plugins if m not in set(folder.get("plugins", [])) or m in asked]
    REGISTRY.import_modules(modules)
    with named_modules_hint(list(cfg.plugins), modules):
        check_plugins(cfg)
    check_values(OmegaConf.to_object(cfg))
    return cfg


def _precision_here(cfg) -> str:
    """The precision this process trains ``cfg`` in (the recipe's ``by_precision`` settings follow it)."""
    from .distributed import Launch, resolve_precision

    return resolve_precision(cfg.trainer.mixed_precision, Launch.from_env())


def _refuse_folder_commands(cfg, folder, args: dict) -> None:
    """A ``pipe:`` data source that only the run folder's config names is refused."""
    for key in DATA_SOURCES:
        value = OmegaConf.select(cfg, key)
        if value and key not in args and value == OmegaConf.select(folder, key):
            refuse_saved_command(key, str(value), f"pass {key}=... again to run it")


def check_plugins(cfg) -> None:
    """Fail early, before any data is touched, on an unknown plugin or plugin argument."""
    backbone = REGISTRY.get("backbone", cfg.model.backbone.name)
    validate_options(backbone.config, cfg.model.backbone.args, f"backbone '{backbone.name}'")
    for term, spec in cfg.losses.items():
        loss = REGISTRY.get("loss", spec.name)
        validate_options(loss.config, spec.args, f"loss '{term}' ({spec.name})")


def _help(_: dict) -> str:
    return help_text(USAGE, ABOUT, [("options (key=value: a recipe sets them, the command line overrides)", RunConfig, "")],
                     "model.backbone.args and losses.<term>.args are the plugin's own options: docs/config.md, "
                     "`vaeforge plugins`\nrecipes: `vaeforge recipes`")


@entry_point
def main(argv: list[str]) -> None:
    cfg = resolve_config(read_args(argv, _help))
    from ..data.stream import worker_death
    from .distributed import peer_failed
    from .trainer import Trainer  # heavy imports only once the config is known to be valid

    trainer = Trainer(cfg)
    try:
        state = trainer.fit()
    except (RuntimeError, OSError, EOFError) as exc:
        trainer.abort()
        death = worker_death(exc)
        if death is not None:
            raise death from None
        if peer_failed(exc, trainer.world):
            log.warning(f"rank {trainer.rank} stops: another rank failed (its error is above)")
            raise SystemExit(1) from None
        raise
    except BaseException:
        trainer.abort()  # no barrier: the other ranks may wait in a collective this one will never join
        raise
    trainer.close()
    log.info(f"done: step {state.step}, run folder {cfg.run_dir}\n"
             f"  TensorBoard: tensorboard --logdir {cfg.run_dir} --host 127.0.0.1")


if __name__ == "__main__":
    main()
