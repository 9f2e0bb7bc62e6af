"""Learning-rate schedules: linear warm-up in steps, then constant, cosine or linear decay over a horizon given
in optimizer steps (``trainer.max_steps``) or in training seconds (``trainer.time_budget``)."""
from __future__ import annotations

import math
from collections.abc import Callable

from ..config.schema import SCHEDULES
from ..errors import unknown_choice



def step_progress(warmup: int, total: int) -> Callable[[int], float]:
    """The fraction of the decay done after ``step``, for a horizon of ``total`` steps."""
    return lambda step: (step - warmup) / max(1, total - warmup)


def lr_factor(schedule: str, warmup: int, min_ratio: float) -> Callable[[int, float], float]:
    """The multiplier of the base learning rate for optimizer step ``step`` (0-based) when ``progress`` of the
    decay is done (clamped to [0, 1])."""
    if schedule not in SCHEDULES:
        raise unknown_choice("optim.schedule", schedule, SCHEDULES)

    def factor(step: int, progress: float) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        done = min(1.0, max(0.0, progress))
        shape = 0.5 * (1 + math.cos(math.pi * done)) if schedule == "cosine" else 1.0 - done
        return min_ratio + (1.0 - min_ratio) * shape

    return factor
