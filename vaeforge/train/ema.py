"""The exponential moving average of the VAE's weights: when it is updated, and by how much.

The average follows timm's ``ModelEmaV3`` with warm-up (same decay curve, same foreach interpolation of every
floating-point state tensor, integer buffers copied; ``tests/test_ema.py`` checks it update for update against
timm's). It is kept here because importing ``timm`` loads its whole model zoo, torchvision and wandb: about a
second of start-up in every training and task process (docs/benchmarks.md, "Start-up").

Updating every step costs a pass over all weights, a few percent of a step for a small model on a CPU. With
``every`` > 1 the average is updated on every ``every``-th step with the decay raised to that power, which stands
for that many per-step updates: the same averaging window at a fraction of the cost (ema-pytorch's
``update_every`` does the same, without the power). The first ``every`` steps update each step, so even a short
run has a trained average. Which steps update depends on the step number only, so a resumed run updates exactly
where an uninterrupted one does.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_POWER = 2 / 3  # decay(step) = 1 - (1 + step) ** -2/3, capped at the configured decay (timm's default curve)


class WeightAverage:
    """An EMA copy (``module``, in eval mode) of a model's state; ``decay`` caps the warm-up curve."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay

    def decay_at(self, step: int) -> float:
        """The decay of the update after 0-based step ``step``: 0 (a copy) for the first two, then warming up."""
        step = max(0, step - 1)
        return 0.0 if step == 0 else min(1 - (1 + step) ** -WARMUP_POWER, self.decay)

    @torch.no_grad()
    def apply(self, model: nn.Module, decay: float) -> None:
        """Move the average towards ``model``'s state by ``1 - decay``."""
        ema, live = [], []
        for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.is_floating_point():
                ema.append(mine)
                live.append(theirs.to(dtype=mine.dtype))
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_(ema, live, 1.0 - decay)


def steps_covered(step: int, every: int) -> int:
    """How many optimizer steps the update after step ``step`` (0-based) stands for; 0: no update."""
    if step < every:
        return 1
    return every if (step + 1) % every == 0 else 0


def update(ema: WeightAverage, model: nn.Module, step: int, covered: int) -> None:
    """The EMA update after optimizer step ``step`` (0-based), standing for ``covered`` steps
    (``steps_covered(step, every)``, non-zero)."""
    ema.apply(model, ema.decay_at(step) ** covered)
