"""The EMA: the same averages as timm's ModelEmaV3 with warm-up; which steps update, and an update every k steps
standing for k per-step updates."""
from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

from vaeforge.train import ema as ema_schedule
from vaeforge.train.ema import WeightAverage


def test_which_steps_update_and_how_many_steps_each_covers():
    covered = [ema_schedule.steps_covered(step, 4) for step in range(12)]
    assert covered == [1, 1, 1, 1, 0, 0, 0, 4, 0, 0, 0, 4]
    assert sum(covered) == 12  # every step is accounted for once
    assert [ema_schedule.steps_covered(step, 1) for step in range(5)] == [1] * 5


def test_one_update_every_k_steps_equals_k_updates_when_the_weights_hold_still():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    every_step, every_fourth = WeightAverage(model, decay=0.9), WeightAverage(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the trained weights move away from the average's start and stay there
    for step in range(100, 104):  # past the warm-up (decay capped at 0.9): steps 100-102 skip, 103 covers 100-103
        ema_schedule.update(every_step, model, step, 1)
        if covered := ema_schedule.steps_covered(step, 4):
            ema_schedule.update(every_fourth, model, step, covered)
    for key, value in every_step.module.state_dict().items():
        assert not torch.allclose(value, start[key])
        torch.testing.assert_close(every_fourth.module.state_dict()[key], value, rtol=0, atol=1e-6)


def test_the_average_is_timm_s_model_ema_v3_with_warm_up_update_for_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # parameters, float and integer buffers
    ours, timm_s = WeightAverage(model, decay=0.995), ModelEmaV3(model, decay=0.995, use_warmup=True)
    assert [ours.decay_at(s) for s in range(300)] == [timm_s.get_decay(s) for s in range(300)]
    for step in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(2, 3, 5, 5))  # BatchNorm's running statistics and batch count move
        ema_schedule.update(ours, model, step, 1)
        timm_s.update(model, step=step)
    for (key, value), theirs in zip(ours.module.state_dict().items(), timm_s.module.state_dict().values()):
        torch.testing.assert_close(value, theirs, rtol=0, atol=0, msg=key)
    assert ours.module.state_dict()["1.num_batches_tracked"] == 6 and not ours.module.training
