"""What a run shows while it trains: TensorBoard events and a progress bar, on rank 0 only."""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from ..errors import VaeforgeError, write_failure
from ..runs.layout import TB_DIR

log = logging.getLogger(__name__)
QUIET = "vaeforge_quiet_tensorboard"  # marks the installed threading.excepthook


class Monitor:
    """TensorBoard writer plus tqdm bar; every method is a no-op on ranks other than 0.

    The bar counts what ends the run: optimizer steps up to ``max_steps``, or, with a time budget, training
    seconds up to the budget (so its total and ETA are the budget's, not a nominal step count's). Events that
    cannot be written (a full disk) stop the run with one line naming the folder."""

    def __init__(self, run_dir: Path, enabled: bool, max_steps: int, budget: float | None, progress: bool) -> None:
        self.enabled, self.budget, self.events = enabled, budget, run_dir / TB_DIR
        self.writer: SummaryWriter | None = None
        if enabled:
            _quiet_tensorboard_threads()
            with self._reported():
                self.writer = SummaryWriter(str(self.events))
        total, unit = (max_steps, "step") if budget is None else (round(budget), "s")
        self.bar = tqdm(total=total, desc="train", unit=unit, dynamic_ncols=True, disable=not (enabled and progress))

    @contextlib.contextmanager
    def _reported(self) -> Iterator[None]:
        """A failed write of the event writer stops the run in one line; the writer is dropped (its thread has
        ended, and would raise the same error again)."""
        try:
            yield
        except OSError as exc:
            self.writer = None
            problem, fix = write_failure(exc)
            raise VaeforgeError(f"cannot write TensorBoard events in {self.events}: {problem}: {fix}, then continue "
                                "with resume=true from the last checkpoint") from None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            with self._reported():
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.writer:
            with self._reported():
                self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def grid(self, tag: str, images: torch.Tensor, step: int, nrow: int) -> None:
        """Images in [0, 1], ``[N, C, H, W]``, as one grid image."""
        if self.writer:
            with self._reported():
                self.writer.add_image(tag, make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow), step)

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

    def close(self) -> None:
        self.bar.close()
        if self.writer:
            with self._reported():
                self.writer.close()
            self.writer = None


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
