"""The ``vaeforge`` command: one console script with the verbs of the ``python -m`` entry points."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from .logs import FLAGS_HELP, entry_point
from .options import help_text, read_args
from ..errors import ConfigError, unknown_choice

USAGE = """usage: vaeforge <verb> [-q | -v] [key=value ...]   (vaeforge <verb> --help: its options)

verbs:
  prepare      LFW, or any folder or archive of images (dataset=folder) -> WebDataset shards + manifest.json
  lpips        download the official LPIPS weights (or convert local .pth files: trunk=, head=) into the cache
  train        train a recipe (use `accelerate launch -m vaeforge.train` for several processes)
  run          run a task (reconstruct, sample, ...) on a trained run
  submit       train on a SLURM cluster (slurm=PROFILE; requeued on preemption; sweep= a grid as one array; --dry-run)
  leaderboard  one table (Markdown, sortable HTML) of every run below a folder: swept keys, steps, evaluate numbers
  plugins      list every registered plugin with its kind and origin
  report       write a self-contained HTML page for a run (curves, grids, task results, config)
  export       write a run's model as a portable folder (config.json, model.safetensors, model card) for from_pretrained
  recipes      list the available recipes

{flags} (every verb)
"""


@dataclass
class PluginsOptions:
    plugins: List[str] = field(default_factory=list)  # modules to import for their plugins before listing


def list_plugins(argv: list[str]) -> None:
    from ..config.loader import validate_options
    from ..registry import REGISTRY

    usage, about = "vaeforge plugins [plugins=[module,...]]", "List every registered plugin with its kind and origin."
    args = read_args(argv, lambda _: help_text(usage, about, [("options (key=value)", PluginsOptions, "")]))
    REGISTRY.import_modules(validate_options(PluginsOptions, args, "plugins").plugins)
    rows = [(p.kind, p.name, p.origin) for p in REGISTRY.all()]
    width = max((len(n) for _, n, _ in rows), default=4)
    for kind, name, origin in rows:
        print(f"{kind:<9} {name:<{width}}  {origin}")


def list_recipes(argv: list[str]) -> None:
    from ..config import available_recipes
    from ..config.shipped import shipped_dir

    about = "List the recipes (./recipes, then vaeforge's) and where the shipped accelerate configs are."
    args = read_args(argv, lambda _: help_text("vaeforge recipes", about, []))
    if args:
        raise ConfigError(f"vaeforge recipes takes no options, got: {', '.join(args)}")
    for name, path in sorted(available_recipes().items()):
        print(f"{name:<16} {path}")
    print(f"accelerate configs (accelerate launch --config_file <file>): {shipped_dir('vaeforge.recipes') / 'accelerate'}")


def _verbs() -> dict:
    from .. import prepare, run, submit
    from ..models import lpips_weights
    from ..runs import export, leaderboard, report
    from ..train import __main__ as train

    return {"prepare": prepare.main, "lpips": lpips_weights.main, "train": train.main, "run": run.main,
            "report": report.main, "leaderboard": leaderboard.main, "export": export.main, "submit": submit.main, "plugins": list_plugins,
            "recipes": list_recipes}


@entry_point
def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(flags=FLAGS_HELP))
        return
    verbs = _verbs()
    verb, rest = argv[0], argv[1:]
    if verb not in verbs:
        raise unknown_choice("verb", verb, verbs)
    verbs[verb](rest)


if __name__ == "__main__":
    main()
