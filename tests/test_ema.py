"""The EMA schedule: which steps update, and an update every k steps standing for k per-step updates."""
from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

from vaeforge.train import ema as ema_schedule


def test_which_steps_update_and_how_many_steps_each_covers():
    covered = [ema_schedule.steps_covered(step, 4) for step in range(12)]
    assert covered == [1, 1, 1, 1, 0, 0, 0, 4, 0, 0, 0, 4]
    assert sum(covered) == 12  # every step is accounted for once
    assert [ema_schedule.steps_covered(step, 1) for step in range(5)] == [1] * 5


def test_one_update_every_k_steps_equals_k_updates_when_the_weights_hold_still():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    every_step, every_fourth = ModelEmaV3(model, decay=0.9), ModelEmaV3(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the trained weights move away from the average's start and stay there
    for step in range(8, 12):  # past the first steps: steps 8-10 skip, step 11 covers 8-11
        every_step.update(model, step=step)
        if covered := ema_schedule.steps_covered(step, 4):
            ema_schedule.update(every_fourth, model, step, covered)
    for key, value in every_step.module.state_dict().items():
        assert not torch.allclose(value, start[key])
        torch.testing.assert_close(every_fourth.module.state_dict()[key], value, rtol=0, atol=1e-6)
