"""``vaeforge leaderboard dir=FOLDER [sort=COLUMN] [task=evaluate] [out=DIR]``: one table of every run below a
folder (a sweep's, or any), as Markdown and as a self-contained HTML page sortable by clicking its headers.

A row per run folder (``config.yaml`` and ``run.json``; each read as data, nothing in it is imported or
unpickled) and per sweep point that has no run folder yet: the run, the swept keys (from the ``sweep.json``
indexes found, else the config keys whose values differ between the runs), the step of its latest checkpoint,
and its numbers: those of ``tasks/<task>/summary.json``, else the last ``val/`` metrics of its TensorBoard log;
the ``source`` column says which. A run without either is listed with blanks.
"""
from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ..cli.logs import entry_point
from ..cli.options import help_text, read_args
from ..config.loader import flatten, validate_options
from ..config.yamlfile import read_yaml
from ..errors import ConfigError, unknown_choice
from .folder import latest_state
from .layout import CONFIG_FILE, RUN_FILE, TASKS_DIR, TB_DIR
from .sweep import SWEEP_FILE, read_index

log = logging.getLogger("vaeforge.runs.leaderboard")  # by name: also when run as __main__ (python -m)

ABOUT = "Gather every run below a folder (a sweep's) into one table: Markdown and a sortable HTML page."
USAGE = "vaeforge leaderboard dir=FOLDER [sort=COLUMN|-COLUMN] [task=evaluate] [out=DIR]"
MARKDOWN, PAGE = "leaderboard.md", "leaderboard.html"
BOOKKEEPING = ("seed", "seconds", "files")  # numbers the task runner adds to every summary
FIXED = ("run", "steps", "source")
NOT_COMPARED = ("run_dir",)  # differs between any two runs
# Click a header: sort by it (numbers as numbers, blanks last); click again: the other way.
SORT_JS = """document.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{
const body=th.closest('table').tBodies[0],up=th.dataset.order!=='asc';
th.parentNode.querySelectorAll('th').forEach(h=>delete h.dataset.order);th.dataset.order=up?'asc':'desc';
const v=r=>r.cells[i].dataset.v;
[...body.rows].sort((a,b)=>{const x=v(a),y=v(b);if(x===''||y==='')return (x==='')-(y==='');
const d=isNaN(x)||isNaN(y)?x.localeCompare(y):x-y;return up?d:-d;}).forEach(r=>body.appendChild(r));}));"""
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}.sub{color:#666}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{cursor:pointer;background:#f6f6f6}th[data-order=asc]::after{content:' \\25B2'}
th[data-order=desc]::after{content:' \\25BC'}td.num{text-align:right;font-variant-numeric:tabular-nums}"""


@dataclass
class LeaderboardOptions:
    """Which runs, which numbers, in which order, and where the table goes."""

    dir: str = MISSING  # a folder of runs: a sweep's run_dir, or any folder with run folders below it
    sort: Optional[str] = None  # a column to sort by, ascending; -COLUMN: descending (blanks last); default: by run
    task: str = "evaluate"  # the task whose tasks/<task>/summary.json gives a run's numbers
    out: Optional[str] = None  # the folder leaderboard.md and leaderboard.html go to; default: dir


def scan(folder: Path) -> tuple[list[Path], dict[Path, dict[str, Any]]]:
    """Run folders at or below ``folder`` (not below a run folder), in path order, and the sweep indexes found."""
    runs, indexes = [], {}
    for here, dirs, files in os.walk(folder):
        if SWEEP_FILE in files and (index := read_index(Path(here))):
            indexes[Path(here)] = index
        if CONFIG_FILE in files and RUN_FILE in files:
            runs.append(Path(here))
            dirs.clear()
    return sorted(runs), indexes


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_numbers(run: Path, task: str) -> dict[str, Any] | None:
    """The numbers of the run's task summary (not the runner's bookkeeping, nor the task's options it echoes);
    None without a readable summary."""
    try:
        summary = json.loads((run / TASKS_DIR / task / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    options = summary.get("options") if isinstance(summary.get("options"), dict) else {}
    return {k: v for k, v in summary.items() if is_number(v) and k not in BOOKKEEPING and k not in options}


def last_validation(run: Path) -> tuple[int, dict[str, float]]:
    """The last value of each ``val/`` scalar of the run's TensorBoard log, and the step of the latest."""
    if not (run / TB_DIR).is_dir():
        return 0, {}
    acc = EventAccumulator(str(run / TB_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    last = {tag: acc.Scalars(tag)[-1] for tag in acc.Tags().get("scalars", []) if tag.startswith("val/")}
    return max((e.step for e in last.values()), default=0), {tag: e.value for tag, e in last.items()}


def run_row(run: Path, folder: Path, task: str) -> dict[str, Any]:
    """One run's row without its swept values: run, steps, source and numbers."""
    row: dict[str, Any] = {"run": str(run.relative_to(folder)) if run != folder else run.name,
                           "steps": latest_state(run).get("step"), "source": ""}
    numbers = summary_numbers(run, task)
    if numbers is not None:
        return {**row, "source": task, **numbers}
    step, values = last_validation(run)
    return {**row, "source": f"val (step {step})", **values} if values else row


def swept_keys(configs: dict[Path, dict[str, Any]], indexes: dict[Path, dict[str, Any]]) -> list[str]:
    """The sweeps' keys, in grid order; without a sweep index, the config keys that differ between the runs."""
    if indexes:
        return list(dict.fromkeys(k for index in indexes.values() for p in index["points"] for k in p["overrides"]))
    keys = list(dict.fromkeys(k for config in configs.values() for k in config))
    return [k for k in keys if k not in NOT_COMPARED
            and len({json.dumps(c.get(k)) for c in configs.values()}) > 1]


def gather(folder: Path, task: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of the leaderboard of ``folder``."""
    if not folder.is_dir():
        raise ConfigError(f"leaderboard: {folder} is not a folder")
    runs, indexes = scan(folder)
    configs = {run: flatten(read_yaml(run / CONFIG_FILE, "run config")) for run in runs}
    waiting = {root / p["folder"]: p["overrides"] for root, index in indexes.items() for p in index["points"]
               if root / p["folder"] not in configs}
    if not runs and not waiting:
        raise ConfigError(f"leaderboard: no run folders below {folder} (a run folder holds {CONFIG_FILE} and "
                          f"{RUN_FILE}; a sweep's {SWEEP_FILE} lists its points)")
    keys = swept_keys(configs, indexes)
    rows = []
    for run in sorted([*runs, *waiting]):
        row = run_row(run, folder, task) if run in configs else {"run": str(run.relative_to(folder)),
                                                                "source": "not started"}
        values = configs[run] if run in configs else waiting[run]
        rows.append({**row, **{k: values.get(k) for k in keys}})
    numbers = [k for row in rows for k in row if k not in FIXED and k not in keys]
    return ["run", *keys, "steps", "source", *dict.fromkeys(numbers)], rows


def sort_rows(columns: list[str], rows: list[dict[str, Any]], sort: str | None) -> list[dict[str, Any]]:
    """Rows by ``sort`` (a column; ``-column``: descending), blanks last; numbers before text."""
    if not sort:
        return rows
    column = sort.lstrip("-")
    if column not in columns:
        raise unknown_choice("leaderboard column", column, columns)
    filled = [r for r in rows if cell(r.get(column))]
    blank = [r for r in rows if not cell(r.get(column))]
    key = (lambda r: (0, r[column], "") if is_number(r[column]) else (1, 0, cell(r[column])))  # noqa: E731
    return sorted(filled, key=key, reverse=sort.startswith("-")) + blank


def cell(value: Any) -> str:
    """A value as the table shows it: blank when missing, floats to 6 significant digits, lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([line(columns), line(["---"] * len(columns)),
                      *(line([cell(r.get(c)) for c in columns]) for r in rows)]) + "\n"


def page(folder: Path, task: str, columns: list[str], rows: list[dict[str, Any]], sort: str | None) -> str:
    """The self-contained HTML page: the table, its cells carrying their sort values, and the sorting script."""
    def th(c: str) -> str:
        order = "" if not sort or sort.lstrip("-") != c else "desc" if sort.startswith("-") else "asc"
        return f"<th{f' data-order={order}' if order else ''}>{html.escape(c)}</th>"

    def td(value: Any) -> str:
        text = html.escape(cell(value))
        sort_value = repr(value) if is_number(value) else text
        return f'<td{" class=num" if is_number(value) else ""} data-v="{sort_value}">{text}</td>'

    body = "".join("<tr>" + "".join(td(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vaeforge leaderboard {html.escape(folder.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>Leaderboard</h1>"
            f"<p class='sub'>{len(rows)} run(s) below {html.escape(str(folder.resolve()))}; numbers: tasks/"
            f"{html.escape(task)}/summary.json, else the last val/ metrics of TensorBoard (column source). "
            "Click a header to sort.</p>"
            f"<table><thead><tr>{''.join(th(c) for c in columns)}</tr></thead><tbody>{body}</tbody></table>"
            f"<script>{SORT_JS}</script></body></html>")


def write_leaderboard(opts: LeaderboardOptions) -> tuple[str, Path]:
    """Write leaderboard.md and leaderboard.html; returns the Markdown table and the folder written to."""
    folder = Path(opts.dir)
    columns, rows = gather(folder, opts.task)
    rows = sort_rows(columns, rows, opts.sort)
    table = markdown(columns, rows)
    out = Path(opts.out) if opts.out else folder
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKDOWN).write_text(f"# Leaderboard: {folder.resolve()}\n\n{table}")
    (out / PAGE).write_text(page(folder, opts.task, columns, rows, opts.sort))
    return table, out


@entry_point
def main(argv: list[str]) -> None:
    args = read_args(argv, lambda _: help_text(USAGE, ABOUT, [("options (key=value)", LeaderboardOptions, "")]))
    table, out = write_leaderboard(validate_options(LeaderboardOptions, args, "leaderboard"))
    print(table, flush=True)  # the command's output
    log.info(f"leaderboard: {out / MARKDOWN}, {out / PAGE}")


if __name__ == "__main__":
    main()
