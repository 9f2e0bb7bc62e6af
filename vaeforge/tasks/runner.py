"""``python -m vaeforge.run task=NAME run_dir=DIR [input=...] [output=...] [task options]``: run a task plugin
on a trained run; writes the task's files and ``summary.json`` into the output folder."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ..cli.args import parse_overrides, user_errors_exit
from ..config.loader import validate_plugin_args
from ..errors import ConfigError, PluginError, did_you_mean
from ..runs.load import load
from ..registry import REGISTRY
from ..runs.layout import TASKS_DIR
from .context import TaskContext

COMMON = {"task": None, "run_dir": None, "input": None, "output": None, "seed": 0, "checkpoint": None,
          "weights": "ema", "device": "cpu", "limit": 0, "plugins": []}
SUMMARY = "summary.json"


def run_task(args: dict[str, Any]) -> dict[str, Any]:
    """Run one task from ``key=value`` arguments; returns the summary that was written."""
    common = {k: args.get(k, v) for k, v in COMMON.items()}
    if not common["task"]:
        raise ConfigError(f"no task given: pass task=NAME ({did_you_mean('', REGISTRY.names('task'))})")
    if not common["run_dir"]:
        raise ConfigError("no run given: pass run_dir=<a training run folder>")
    modules = common["plugins"] or []  # user plugin modules not declared as entry points: plugins=[a,b] or plugins=a
    plugins = [modules] if isinstance(modules, str) else list(modules)
    REGISTRY.import_modules(plugins)
    plugin = REGISTRY.get("task", str(common["task"]))
    model = load(common["run_dir"], common["checkpoint"], common["weights"], common["device"], plugins)
    options = {k: v for k, v in args.items() if k not in COMMON}
    cfg = validate_plugin_args(plugin.config, options, f"task '{plugin.name}'")
    output = Path(common["output"] or Path(common["run_dir"]) / TASKS_DIR / plugin.name)
    output.mkdir(parents=True, exist_ok=True)
    where = f"task '{plugin.name}' ({plugin.origin})"
    ctx = TaskContext(model, output, int(common["seed"]), common["input"], int(common["limit"]), where)
    started = time.monotonic()
    result = task_result(plugin.target(ctx, cfg), where, output)
    summary = {
        "task": plugin.name,
        "run_dir": str(common["run_dir"]),
        "checkpoint": str(model.checkpoint),
        "weights": model.weights,
        "seed": ctx.seed,
        "options": asdict(cfg) if is_dataclass(cfg) else {},
        "seconds": round(time.monotonic() - started, 3),
        **result,
    }
    (output / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def task_result(result: Any, where: str, output: Path) -> dict[str, Any]:
    """A task's return value checked against the contract: a dict of JSON values, merged into ``summary.json``;
    ``output`` (default: the output folder) and ``files`` (default: the files in it) are filled in. ``where``
    names the task in errors."""
    if not isinstance(result, dict):
        raise PluginError(f"{where} returned {type(result).__name__}: a task returns a dict of JSON values (its "
                          "summary), e.g. {'output': str(ctx.output), 'files': n}")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where} returned a summary that is not JSON ({exc}): convert tensors with float() "
                          "or .tolist() and paths with str()") from None
    files = sum(1 for p in output.rglob("*") if p.is_file() and p.name != SUMMARY)
    return {"output": str(output), "files": files, **result}


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    summary = run_task(parse_overrides(sys.argv[1:] if argv is None else argv))
    print(f"{summary['task']}: wrote {summary.get('files', '?')} file(s) to {summary.get('output')}")


if __name__ == "__main__":
    main()
