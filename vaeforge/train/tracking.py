"""Experiment trackers through Accelerate: ``trainer.log_with`` names them (accelerate's ``GeneralTracker``s:
tensorboard, mlflow, wandb, ...). Every tracker gets the scalars and the resolved config (flattened) as its run's
parameters; TensorBoard, written into the run folder's ``tb/`` as before, also gets the histograms and the image
grids, and shows the config with the final value of every scalar (validation metrics among them) in its HParams tab.

A resumed run continues its trackers' runs (MLflow's run id, W&B's run id, kept in ``trackers.json``) instead of
starting new ones; TensorBoard appends a new event file to ``tb/``.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import (LOGGER_TYPE_TO_CLASS, GeneralTracker, TensorBoardTracker, get_available_trackers,
                                 on_main_process)
from accelerate.utils import LoggerType
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ..errors import ConfigError, unknown_choice
from ..runs.layout import TB_DIR, TRACKERS_FILE

log = logging.getLogger(__name__)

PIP = {"comet_ml": "comet-ml", "mlflow": "mlflow-skinny (or mlflow)"}  # the package of a tracker, when not its name
# How a tracker's run is named, read back, and continued by a resume: init arguments for a new run (named after the
# run folder), the id of its run, and the init arguments that continue that run.
RUNS: dict[str, tuple[Callable[[str], dict], Callable[[Any], str], Callable[[str], dict]]] = {
    "mlflow": (lambda name: {"run_name": name}, lambda t: t.active_run.info.run_id, lambda rid: {"run_id": rid}),
    "wandb": (lambda name: {"name": name}, lambda t: t.run.id, lambda rid: {"id": rid, "resume": "allow"}),
}


def _end_mlflow_failed(tracker: Any) -> None:
    import mlflow  # only with the mlflow tracker, whose package is then installed

    mlflow.end_run(status="FAILED")


# How a tracker's run is ended as failed (accelerate's finish() ends every run as a success)
FAILED: dict[str, Callable[[Any], None]] = {
    "mlflow": _end_mlflow_failed,
    "wandb": lambda t: t.run.finish(exit_code=1),
}


def check_trackers(names: Iterable[str]) -> None:
    """One line for a tracker accelerate does not know (did-you-mean) or whose package is not installed."""
    installed = set(map(str, get_available_trackers()))
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise unknown_choice("trainer.log_with tracker", name, LOGGER_TYPE_TO_CLASS)
        if name in LoggerType.list() and name not in installed:  # a registered custom tracker is always there
            raise ConfigError(f"trainer.log_with names {name}, which is not installed: pip install {PIP.get(name, name)}")


class RunEvents(TensorBoardTracker):
    """Accelerate's TensorBoard tracker writing into the run folder's ``tb/`` itself (accelerate's adds a folder
    named after the project), with the config as the HParams of that same run: TensorBoard's HParams tab then
    shows the run as one session, its config beside the last value of each of its scalars (the final validation
    metrics among them). Accelerate's writes the config into a run of its own, without metrics, under an
    experiment summary that lists none, so the tab showed no metric."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder.parent.name, folder)

    @on_main_process
    def start(self) -> None:
        self.logging_dir = str(self.logging_dir_param)
        self.writer = SummaryWriter(self.logging_dir)

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """The session's start: its hyper-parameters. No experiment summary: TensorBoard then takes every scalar
        of the session's run as a metric (a summary would fix the list of metrics at the first session's)."""
        self.writer.file_writer.add_summary(hparams(values, {})[1])
        self.writer.flush()

    @on_main_process
    def end_session(self) -> None:
        """The session's end, successful (training ended: steps, time budget, time limit or a signal)."""
        self.writer.file_writer.add_summary(hparams({}, {})[2])
        self.writer.flush()


def log_with(names: Iterable[str], run_dir: Path) -> list[str | GeneralTracker]:
    """What ``Accelerator(log_with=...)`` gets for ``trainer.log_with`` (each tracker once): TensorBoard as
    :class:`RunEvents`."""
    return [RunEvents(run_dir / TB_DIR) if name == "tensorboard" else name for name in dict.fromkeys(names)]


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The config as ``a.b.c: value`` parameters: numbers, strings and booleans as they are, lists and null as
    JSON text (what trackers take as a parameter)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return flat


def start(acc: Accelerator, run_dir: Path, config: dict[str, Any], project: str) -> None:
    """Start the Accelerator's trackers for this run folder, in ``project``: runs it started before are continued,
    new ones are named after the folder and get ``config`` as their parameters (a continued run keeps the ones it
    started with; TensorBoard's HParams get each session's). Every rank calls it; Accelerate starts trackers on
    rank 0 only."""
    path = run_dir / TRACKERS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    names = [t.name if isinstance(t, GeneralTracker) else str(t) for t in acc.log_with]
    kwargs = {name: (resume(saved[name]) if name in saved else new(run_dir.name))
              for name, (new, _, resume) in RUNS.items() if name in names}
    acc.init_trackers(project, init_kwargs=kwargs)
    if not acc.is_main_process:
        return
    for tracker in acc.trackers:
        if tracker.name not in saved:
            tracker.store_init_configuration(config)
    ids = {t.name: RUNS[t.name][1](t) for t in acc.trackers if t.name in RUNS}
    if ids:
        path.write_text(json.dumps({**saved, **ids}, indent=1) + "\n")
    log.debug(f"trackers: {', '.join(names) or 'none'}; continued: {', '.join(n for n in ids if n in saved) or 'none'}")


def finish(tracker: GeneralTracker, failed: bool) -> None:
    """End ``tracker``'s run: as failed when the training failed and the tracker records that (MLflow's status,
    W&B's exit code), else as accelerate ends it."""
    if failed and tracker.name in FAILED:
        FAILED[tracker.name](tracker)
    else:
        tracker.finish()
