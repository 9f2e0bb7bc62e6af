"""One training step for every optimizer group: forward, backward, clip, step, skip what is not finite."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from ..models.objective import VAEOutput, detached
from .groups import ModelGroup, OwnedGroup, frozen


@dataclass
class StepResult:
    """What one micro-batch gave: the model's total loss and terms, its output, and, when the micro-batch
    ended an optimizer step (``synced``), each group's gradient norm and whether its update was applied."""

    total: torch.Tensor
    logs: dict[str, torch.Tensor]
    out: VAEOutput
    synced: bool
    grad_norm: float = float("nan")
    applied: bool = False
    owned: dict[str, float] = field(default_factory=dict)  # "<group>/loss", "<group>/grad_norm", "<group>/<extra>"


@dataclass
class Groups:
    """The optimizer groups of a run and what the step needs to run them."""

    acc: Accelerator
    model: nn.Module  # the prepared (DDP / DeepSpeed) TrainModule
    main: ModelGroup
    owned: list[OwnedGroup]

    def owned_params(self) -> list[nn.Parameter]:
        return [p for g in self.owned for p in g.params]


def train_step(groups: Groups, x_in: torch.Tensor, target: torch.Tensor, step: int) -> StepResult:
    """Train on one micro-batch: the model on its objective (owned modules frozen), then each owned module
    active at ``step`` on its own objective of the model's detached output. Optimizers step when the
    micro-batch completes an accumulation (all groups together)."""
    acc = groups.acc
    with acc.accumulate(groups.model), frozen(groups.owned_params()):
        with acc.autocast():
            total, logs, out = groups.model(x_in, target, step)
        acc.backward(total)
        result = StepResult(total.detach(), logs, out, acc.sync_gradients)
        if result.synced:
            result.grad_norm, result.applied = groups.main.step(total)
    cut = detached(out)
    for group in groups.owned:
        if not group.active(step):
            continue
        logs = group.backward(cut, target, step)
        if result.synced:
            norm, _ = group.step()
            result.owned.update({f"{group.name}/{key}": float(value) for key, value in logs.items()})
            result.owned[f"{group.name}/grad_norm"] = norm
    return result
