"""``vaeforge report run_dir=DIR [output=FILE]``: one self-contained HTML page for a run.

Config, the setup it ran with, metric curves (inline SVG), the latest TensorBoard grids, every task's grid and
summary numbers, and evaluation metrics; images are embedded, so the file can be mailed or archived alone.
"""
from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ..cli.logs import entry_point
from ..cli.options import help_text, read_args
from ..config.loader import validate_options
from ..config.yamlfile import read_yaml
from ..errors import CheckpointError
from .checkpoints import latest_checkpoint, read_state
from .layout import CONFIG_FILE, RUN_FILE, TASKS_DIR, TB_DIR

log = logging.getLogger("vaeforge.runs.report")  # by name: under vaeforge's also when run as __main__ (python -m)

# Charted first, in this order; every other train/, val/ and perf/ scalar follows (a plugin's own loss terms too).
KNOWN_CURVES = ("train/loss", "val/loss", "val/psnr", "train/kl/nats", "train/kl/beta", "train/lr",
                "train/grad_norm", "train/active_units", "perf/images_per_sec", "perf/data_wait_fraction")
CHARTED = ("train/", "val/", "perf/")
MARKERS_UP_TO = 12  # a series this short gets a circle at each point: one point draws no line, a few hide in one
REPORT = "report.html"
ABOUT = "Write one self-contained HTML page for a run: curves, grids, task results, config."
USAGE = "vaeforge report run_dir=DIR [output=FILE]"
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{margin-bottom:0}.sub{color:#666}section{margin-top:2em}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #ddd;padding:4px}
.gallery img{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
pre{background:#f6f6f6;padding:1em;overflow:auto}"""
# Marks the page as rendered with every image decoded (checked by the report test in headless Chromium).
ONLOAD = """window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.images=i.length;document.body.dataset.decoded=i.filter(x=>x.naturalWidth>0).length;});"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def svg_chart(title: str, points: list[tuple[int, float]], width: int = 360, height: int = 200,
              note: Sequence[str] = ()) -> str:
    """A line chart of (step, value) points as inline SVG, with the value and step ranges written on it, a
    circle at each point of a short series (so a series logged once is a dot, not an empty box), and the lines
    of ``note`` as a subtitle under the title (the plot moves down to make room)."""
    pad, line_height = 34, 11
    top = pad + line_height * len(note)
    steps, values = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(values), max(values)
    x0, x1 = min(steps), max(steps)
    sx = lambda s: pad + (width - 2 * pad) * ((s - x0) / (x1 - x0) if x1 > x0 else 0.5)  # noqa: E731
    sy = lambda v: height - pad - (height - pad - top) * ((v - lo) / (hi - lo) if hi > lo else 0.5)  # noqa: E731
    line = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in points)
    markers = "" if len(points) > MARKERS_UP_TO else "".join(
        f'<circle class="marker" cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="3.5" fill="#1f77b4"/>' for s, v in points)
    subtitle = "".join(f'<text class="note" x="{pad}" y="{29 + line_height * i}" font-size="10" fill="#b03a2e">'
                       f"{_esc(text)}</text>" for i, text in enumerate(note))
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<title>{_esc(title)}</title><text x="{pad}" y="16" font-size="13">{_esc(title)}</text>{subtitle}'
        f'<text x="2" y="{top}" font-size="10">{hi:.4g}</text>'
        f'<text x="2" y="{height - pad}" font-size="10">{lo:.4g}</text>'
        f'<text x="{pad}" y="{height - 8}" font-size="10">step {x0}</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">{x1}</text>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>{markers}</svg>'
    )


def chart_order(tags: Iterable[str]) -> list[str]:
    """The scalar tags to chart, in reading order: train/ and val/ before perf/, and within each the known
    curves in KNOWN_CURVES' order, then the rest (a plugin's loss terms, say) by name."""
    def rank(tag: str) -> tuple[bool, bool, int, str]:
        known = tag in KNOWN_CURVES
        return tag.startswith("perf/"), not known, KNOWN_CURVES.index(tag) if known else 0, tag

    return sorted((tag for tag in tags if tag.startswith(CHARTED)), key=rank)


def schedule_note(config: dict[str, Any], last_step: int, train_seconds: float) -> list[str]:
    """How far the lr schedule got, when training ended before its end: inside the warm-up (in steps), or short
    of the decay's horizon (trainer.time_budget seconds, else trainer.max_steps), so that a cut-off lr chart is
    not read as a finished one. Empty when the schedule ran to its end."""
    optim, trainer = config["optim"], config["trainer"]
    warmup = int(optim["warmup_steps"])
    if last_step < warmup:
        return ["schedule stopped in its warm-up", f"step {last_step:,} of optim.warmup_steps {warmup:,}"]
    if optim["schedule"] == "constant":
        return []
    budget = trainer.get("time_budget")  # absent from runs older than the setting
    if budget:
        done, where = train_seconds / budget, f"{train_seconds:,.0f} of {budget:,.0f} s of trainer.time_budget"
    else:
        total = int(trainer["max_steps"])
        done = (last_step - warmup) / max(1, total - warmup)
        where = f"step {last_step:,} of trainer.max_steps {total:,}"
    return [] if done >= 1 else [f"schedule stopped at {done:.0%} of its horizon", where]


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"scalars": 0, "images": 1})
    acc.Reload()
    return acc


def _training_end(run_dir: Path, acc: EventAccumulator) -> tuple[int, float]:
    """The step and training seconds the run has reached: its latest checkpoint (every run ends with one) or
    its last TensorBoard log, whichever is further (scalars are logged every trainer.log_every steps only)."""
    tags = set(acc.Tags().get("scalars", []))
    step = acc.Scalars("train/lr")[-1].step if "train/lr" in tags else 0
    seconds = acc.Scalars("progress/train_seconds")[-1].value if "progress/train_seconds" in tags else 0.0
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return step, seconds
    state = read_state(latest)
    return max(step, state.step), max(seconds, state.train_seconds)


def _curves(run_dir: Path, acc: EventAccumulator) -> str:
    """A chart per train/, val/ and perf/ scalar; the lr chart says where a cut-off schedule stopped."""
    config = read_yaml(run_dir / CONFIG_FILE, "run config")
    notes = {"train/lr": schedule_note(config, *_training_end(run_dir, acc))}
    charts = [svg_chart(tag, [(e.step, e.value) for e in acc.Scalars(tag)], note=notes.get(tag, ()))
              for tag in chart_order(acc.Tags().get("scalars", []))]
    return "".join(charts) or "<p>No scalars logged yet.</p>"


def _tb_images(acc: EventAccumulator) -> str:
    parts = []
    for tag in sorted(acc.Tags().get("images", [])):
        latest = acc.Images(tag)[-1]
        parts.append(f"<figure><figcaption>{_esc(tag)} (step {latest.step})</figcaption>"
                     f'<img alt="{_esc(tag)}" src="{png_uri(latest.encoded_image_string)}"></figure>')
    return "".join(parts) or "<p>No image grids logged yet.</p>"


def _numbers(summary: dict[str, Any]) -> str:
    """The scalar results of a task summary as a table (lists and nested per-image values left out)."""
    rows = [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str)) and k not in ("output", "run_dir")]
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _tasks(run_dir: Path) -> str:
    parts = []
    for folder in sorted((run_dir / TASKS_DIR).glob("*")):
        summary_file, grid = folder / "summary.json", folder / "grid.png"
        if not summary_file.is_file():
            continue
        summary = json.loads(summary_file.read_text())
        image = f'<img alt="{_esc(folder.name)} grid" src="{png_uri(grid.read_bytes())}">' if grid.is_file() else ""
        parts.append(f"<h3>{_esc(folder.name)}</h3>{image}{_numbers(summary)}")
    return "".join(parts) or "<p>No task has been run on this run yet (python -m vaeforge.run task=...).</p>"


def render(run_dir: Path) -> str:
    """The report page of a run folder."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir} is not a vaeforge run folder (no {CONFIG_FILE})")
    setup = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    acc = _events(run_dir)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vaeforge run {_esc(run_dir.name)}</title>"
        f"<style>{STYLE}</style><script>{ONLOAD}</script></head><body>"
        f"<h1>{_esc(run_dir.name)}</h1><p class='sub'>{_esc(run_dir.resolve())}</p>"
        f"<section><h2>Setup</h2>{_numbers({k: v for k, v in setup.items() if not isinstance(v, dict)})}</section>"
        f"<section><h2>Metrics</h2><div class='charts'>{_curves(run_dir, acc)}</div></section>"
        f"<section class='gallery'><h2>Training grids</h2>{_tb_images(acc)}</section>"
        f"<section class='gallery'><h2>Tasks</h2>{_tasks(run_dir)}</section>"
        f"<section><h2>Config</h2><pre>{_esc((run_dir / CONFIG_FILE).read_text())}</pre></section>"
        "</body></html>"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    path = Path(output) if output else run_dir / REPORT
    path.write_text(render(run_dir))
    return path


@dataclass
class ReportOptions:
    """Which run to report on, and where the page goes."""

    run_dir: str = MISSING  # a training run folder
    output: Optional[str] = None  # the HTML file; default: <run_dir>/report.html


@entry_point
def main(argv: list[str]) -> None:
    args = read_args(argv, lambda _: help_text(USAGE, ABOUT, [("options (key=value)", ReportOptions, "")]))
    opts = validate_options(ReportOptions, args, "report")
    log.info(f"report: {write_report(opts.run_dir, opts.output)}")

if __name__ == "__main__":
    main()
