"""Learning-rate schedules in optimizer steps: linear warm-up, then constant, cosine or linear decay."""
from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import ConfigError, did_you_mean

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each step."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown optim.schedule '{schedule}' ({did_you_mean(schedule, SCHEDULES)})")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * shape

    return factor
