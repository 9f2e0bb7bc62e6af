"""The ``vaeforge`` command: one console script with the verbs of the ``python -m`` entry points."""
from __future__ import annotations

import sys

from .args import user_errors_exit
from ..errors import ConfigError, did_you_mean

USAGE = """usage: vaeforge <verb> [key=value ...]

verbs:
  prepare   LFW archive or folder -> WebDataset shards + manifest.json
  lpips     download the official LPIPS weights (or convert local .pth files: trunk=, head=) into the cache
  train     train a recipe (use `accelerate launch -m vaeforge.train` for several processes)
  run       run a task (reconstruct, sample, ...) on a trained run
  submit    train on a SLURM cluster (slurm=PROFILE; requeues itself on preemption; --dry-run)
  plugins   list every registered plugin with its kind and origin
  report    write a self-contained HTML page for a run (curves, grids, task results, config)
  recipes   list the available recipes
"""


def list_plugins(argv: list[str]) -> None:
    from ..registry import REGISTRY

    modules = [a.partition("=")[2] for a in argv if a.startswith("plugins=")]
    if modules:
        REGISTRY.import_modules([m for m in modules[0].strip("[]").split(",") if m])
    rows = [(p.kind, p.name, p.origin) for p in REGISTRY.all()]
    width = max((len(n) for _, n, _ in rows), default=4)
    for kind, name, origin in rows:
        print(f"{kind:<9} {name:<{width}}  {origin}")


def list_recipes(argv: list[str]) -> None:
    from ..config import available_recipes

    for name, path in sorted(available_recipes().items()):
        print(f"{name:<16} {path}")


def _verbs() -> dict:
    from .. import prepare, run, submit
    from ..models import lpips_weights
    from ..runs import report
    from ..train import __main__ as train

    return {"prepare": prepare.main, "lpips": lpips_weights.main, "train": train.main, "run": run.main,
            "report": report.main, "submit": submit.main, "plugins": list_plugins, "recipes": list_recipes}


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    verbs = _verbs()
    verb, rest = argv[0], argv[1:]
    if verb not in verbs:
        raise ConfigError(f"unknown verb '{verb}' ({did_you_mean(verb, verbs)})")
    verbs[verb](rest)


if __name__ == "__main__":
    main()
