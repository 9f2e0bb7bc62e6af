"""``python -m vaeforge.run task=NAME run_dir=DIR [input=...] [output=...] [task options]``: run a task plugin
on a trained run; writes the task's files and ``summary.json`` into the output folder."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from ..cli import PluginsOptions
from ..cli.logs import entry_point
from ..cli.options import help_text, read_args
from ..config.fields import at_least, choice
from ..config.loader import validate_options
from ..errors import ConfigError, PluginError, did_you_mean
from ..runs.load import WEIGHTS, load
from ..registry import REGISTRY
from ..runs.layout import TASKS_DIR
from .context import TaskContext

log = logging.getLogger(__name__)

ABOUT = "Run a task plugin on a trained run; its files and summary.json go into the output folder."
USAGE = "vaeforge run task=NAME run_dir=DIR [input=...] [output=...] [task options ...]"
SUMMARY = "summary.json"


@dataclass
class TaskOptions:
    """The options every task takes; the other ``key=value`` arguments are the task's own."""

    task: str = MISSING  # a registered task (`vaeforge plugins`)
    run_dir: str = MISSING  # a training run folder
    input: Any = None  # val, train, an image file, a folder of images or a list of files (tasks that read faces)
    output: Optional[str] = None  # output folder; default: <run_dir>/tasks/<task>
    seed: int = 0  # same seed, same output
    checkpoint: Optional[str] = None  # a checkpoint folder of the run; default: the newest complete one
    weights: str = choice("ema", WEIGHTS)  # the EMA of the weights (when the run kept one) or the trained weights
    device: str = "cpu"  # a torch device
    limit: int = at_least(0, 0)  # at most this many input images; 0: all
    plugins: List[str] = field(default_factory=list)  # modules to import for their plugins (a run folder names none)
    shards: Optional[str] = None  # where the run's dataset is (input=val, fitted priors); default: its data.shards


def task_options(args: dict[str, Any]) -> tuple[TaskOptions, Any, Any]:
    """``key=value`` arguments of a task run, checked: the options every task takes, the task plugin and its own
    options (also called by ``vaeforge submit then=TASK`` before it queues anything)."""
    common, options = _split(args)
    if not common.get("task"):
        raise ConfigError(f"no task given: pass task=NAME ({did_you_mean('', REGISTRY.names('task'))})")
    if not common.get("run_dir"):
        raise ConfigError("no run given: pass run_dir=<a training run folder>")
    opts: TaskOptions = validate_options(TaskOptions, common, "run")
    REGISTRY.import_modules(opts.plugins)
    plugin = REGISTRY.get("task", opts.task)
    return opts, plugin, validate_options(plugin.config, options, f"task '{plugin.name}'")


def run_task(args: dict[str, Any]) -> dict[str, Any]:
    """Run one task from ``key=value`` arguments; returns the summary that was written."""
    opts, plugin, cfg = task_options(args)
    model = load(opts.run_dir, opts.checkpoint, opts.weights, opts.device, opts.plugins, opts.shards)
    output = Path(opts.output or Path(opts.run_dir) / TASKS_DIR / plugin.name)
    output.mkdir(parents=True, exist_ok=True)
    where = f"task '{plugin.name}' ({plugin.origin})"
    ctx = TaskContext(model, output, opts.seed, opts.input, opts.limit, where)
    started = time.monotonic()
    result = task_result(plugin.target(ctx, cfg), where, output)
    summary = {
        "task": plugin.name,
        "run_dir": opts.run_dir,
        "checkpoint": str(model.checkpoint),
        "weights": model.weights,
        "seed": ctx.seed,
        "options": asdict(cfg) if is_dataclass(cfg) else {},
        "seconds": round(time.monotonic() - started, 3),
        **result,
    }
    (output / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def _split(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` arguments -> (the options every task takes, the task's own)."""
    names = {f.name for f in fields(TaskOptions)}
    return {k: v for k, v in args.items() if k in names}, {k: v for k, v in args.items() if k not in names}


def _help(args: dict[str, Any]) -> str:
    """The options every task takes, then the named task's own (``task=NAME --help``) or the list of tasks."""
    common, _ = _split(args)
    modules = {"plugins": common["plugins"]} if "plugins" in common else {}
    REGISTRY.import_modules(validate_options(PluginsOptions, modules, "run").plugins)
    sections = [("options of every task (key=value)", TaskOptions, "")]
    task = common.get("task")
    note = "tasks: " + ", ".join(REGISTRY.names("task")) + " (their options: vaeforge run task=NAME --help)"
    if task:
        plugin = REGISTRY.get("task", str(task))
        if plugin.config is not None:
            sections.append((f"options of task '{plugin.name}'", plugin.config, ""))
        note = ""
    return help_text(USAGE, ABOUT, sections, note)


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


@entry_point
def main(argv: list[str]) -> None:
    summary = run_task(read_args(argv, _help))
    log.info(f"{summary['task']}: wrote {summary.get('files', '?')} file(s) to {summary.get('output')}")

if __name__ == "__main__":
    main()
