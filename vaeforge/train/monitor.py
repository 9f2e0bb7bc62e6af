"""What a run shows while it trains: TensorBoard events and a progress bar, on rank 0 only."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from ..runs.layout import TB_DIR



class Monitor:
    """TensorBoard writer plus tqdm bar; every method is a no-op on ranks other than 0.

    The bar counts what ends the run: optimizer steps up to ``max_steps``, or, with a time budget, training
    seconds up to the budget (so its total and ETA are the budget's, not a nominal step count's)."""

    def __init__(self, run_dir: Path, enabled: bool, max_steps: int, budget: float | None, progress: bool) -> None:
        self.enabled, self.budget = enabled, budget
        self.writer = SummaryWriter(str(run_dir / TB_DIR)) if enabled else None
        total, unit = (max_steps, "step") if budget is None else (round(budget), "s")
        self.bar = tqdm(total=total, desc="train", unit=unit, dynamic_ncols=True, disable=not (enabled and progress))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.writer:
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def grid(self, tag: str, images: torch.Tensor, step: int, nrow: int) -> None:
        """Images in [0, 1], ``[N, C, H, W]``, as one grid image."""
        if self.writer:
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

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()
