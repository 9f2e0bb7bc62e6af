"""What a run shows while it trains, on rank 0 only: its experiment trackers and a progress bar."""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from tqdm import tqdm

from ..errors import VaeforgeError, write_failure
from ..grid import image_grid
from ..runs.layout import TB_DIR
from . import tracking

log = logging.getLogger(__name__)
QUIET = "vaeforge_quiet_tensorboard"  # marks the installed threading.excepthook


class Monitor:
    """The run's experiment trackers (``trainer.log_with``, started here: :mod:`~vaeforge.train.tracking`) plus a
    tqdm bar and the run's messages; every method is a no-op on ranks other than 0. Scalars go to every tracker;
    histograms, image grids and the HParams session's end (:meth:`end_session`) to TensorBoard.

    The bar counts what ends the run: optimizer steps up to ``max_steps``, or, with a time budget, training
    seconds up to the budget (so its total and ETA are the budget's, not a nominal step count's). A tracker that
    cannot write (a full disk) stops the run with one line naming it (TensorBoard: its folder)."""

    def __init__(self, acc: Accelerator, run_dir: Path, config: dict[str, Any], project: str, max_steps: int,
                 budget: float | None, progress: bool) -> None:
        self.enabled, self.budget, self.events = acc.is_main_process, budget, run_dir / TB_DIR
        self.acc = acc
        self.trackers: list[GeneralTracker] = []
        if self.enabled:
            _quiet_tensorboard_threads()
        with self._reported(*acc.log_with):
            tracking.start(acc, run_dir, tracking.flat_config(config), project)
        if self.enabled:
            self.trackers = list(acc.trackers)
        off = not (self.enabled and progress)
        self.bar = tqdm(total=max_steps, desc="train", unit="step", dynamic_ncols=True, disable=off) \
            if budget is None else BudgetBar(total=round(budget), desc="train", unit="s", dynamic_ncols=True,
                                             bar_format=BudgetBar.FORMAT, disable=off)

    @contextlib.contextmanager
    def _reported(self, *trackers: Any) -> Iterator[None]:
        """A tracker that fails stops the run in one line: a failed write (OSError) of any, any error of another
        tracker than TensorBoard (its server, its store). The tracker is dropped (a writer thread that failed
        would raise the same error again)."""
        names = [t.name if isinstance(t, GeneralTracker) else str(t) for t in trackers]
        try:
            yield
        except Exception as exc:
            if isinstance(exc, OSError):
                problem, fix = write_failure(exc)
            elif names != ["tensorboard"]:
                problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                fix = "check its settings, or leave it out of trainer.log_with"
            else:
                raise
            self.trackers = [t for t in self.trackers if t not in trackers]
            where = (f"TensorBoard events in {self.events}" if names == ["tensorboard"]
                     else f"to the experiment tracker {', '.join(names)}")
            raise VaeforgeError(f"cannot write {where}: {problem}: {fix}, then continue with resume=true from the "
                                "last checkpoint") from None

    def _tensorboard(self) -> tracking.RunEvents | None:
        return next((t for t in self.trackers if isinstance(t, tracking.RunEvents)), None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """``values`` at ``step`` to every tracker (what ``Accelerator.log`` does, each tracker's failure named)."""
        if not self.enabled:
            return
        for tracker in list(self.trackers):
            with self._reported(tracker):
                tracker.log(values, step=step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        tb = self._tensorboard()
        if tb:
            with self._reported(tb):
                tb.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def grid(self, tag: str, images: torch.Tensor, step: int, nrow: int) -> None:
        """Images in [0, 1], ``[N, C, H, W]``, as one grid image."""
        tb = self._tensorboard()
        if tb:
            with self._reported(tb):
                tb.writer.add_image(tag, image_grid(images.detach().float().cpu().clamp(0, 1), nrow), step)

    def end_session(self) -> None:
        """Training ended (not failed): TensorBoard's HParams session says so."""
        tb = self._tensorboard()
        if tb:
            with self._reported(tb):
                tb.end_session()

    def start_clock(self, step: int, seconds: float) -> None:
        """Training starts (or resumes) at ``step`` after ``seconds`` of training: the bar's elapsed time and its
        rate of steps count from here, not from the start-up before."""
        self.bar.reset()
        self.bar.initial = step if self.budget is None else min(round(seconds), self.bar.total)
        self.progress(step, seconds, {})

    def progress(self, step: int, seconds: float, postfix: dict[str, str]) -> None:
        """Where training stands: ``step`` optimizer steps after ``seconds`` of training."""
        if self.budget is None:
            self.bar.n = step
        else:
            self.bar.n = min(round(seconds), self.bar.total)
            postfix = {"step": str(step), **postfix}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def info(self, message: str) -> None:
        if self.enabled:
            log.info(message)

    def warn(self, message: str) -> None:
        if self.enabled:
            log.warning(message)

    def close(self, failed: bool = False) -> None:
        """Close the bar and finish every tracker's run, as failed when the training ``failed`` (the first
        tracker failure raised after all are finished); they are finished here, with failures named, so
        ``Accelerator.end_training`` finds none left."""
        self.bar.close()
        trackers, self.trackers = self.trackers, []
        failure: VaeforgeError | None = None
        for tracker in trackers:
            try:
                with self._reported(tracker):
                    tracking.finish(tracker, failed)
            except VaeforgeError as exc:
                failure = failure or exc
        self.acc.trackers.clear()
        if failure is not None:
            raise failure


class BudgetBar(tqdm):
    """The bar of a time budget: it counts training seconds, which pass as wall seconds (validation and
    checkpoints included), so the time left is the budget's rest. tqdm's estimate from the rate so far also
    counted the start-up and the first steps' warm-up: a 10 s budget's first ETA read 18 s."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]"

    @property
    def format_dict(self) -> dict[str, Any]:
        return {**super().format_dict, "rate": 1.0}


def _quiet_tensorboard_threads() -> None:
    """Do not print a TensorBoard writer thread's failed write: the main thread gets the same error at its next
    call and reports it in one line (a full disk also printed the thread's traceback). Installed once."""
    previous = threading.excepthook
    if getattr(previous, QUIET, False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard")):
            previous(args)

    setattr(hook, QUIET, True)
    threading.excepthook = hook
