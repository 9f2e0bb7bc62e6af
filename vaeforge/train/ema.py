"""When the exponential moving average of the weights is updated, and by how much.

Updating every step costs a pass over all weights, a few percent of a step for a small model on a CPU. With
``every`` > 1 the average is updated on every ``every``-th step with the decay raised to that power, which stands
for that many per-step updates: the same averaging window at a fraction of the cost (ema-pytorch's
``update_every`` does the same, without the power). The first ``every`` steps update each step, so even a short
run has a trained average. Which steps update depends on the step number only, so a resumed run updates exactly
where an uninterrupted one does.
"""
from __future__ import annotations

from timm.utils import ModelEmaV3
from torch import nn



def steps_covered(step: int, every: int) -> int:
    """How many optimizer steps the update after step ``step`` (0-based) stands for; 0: no update."""
    if step < every:
        return 1
    return every if (step + 1) % every == 0 else 0


def update(ema: ModelEmaV3, model: nn.Module, step: int, covered: int) -> None:
    """The EMA update after optimizer step ``step`` (0-based), standing for ``covered`` steps
    (``steps_covered(step, every)``, non-zero)."""
    ema.apply_update_(model, ema.get_decay(step) ** covered)
