"""Optimizer groups: what one optimizer trains and how a step of it is taken.

``ModelGroup``: the model (and loss parameters trained with it), stepped through Accelerate: DDP or DeepSpeed
synchronise its gradients, fp16 scales them, the lr follows the recipe's schedule.
``OwnedGroup``: a module a loss term owns (a discriminator), replicated on every rank and trained on its own
objective and cadence; its gradients are averaged across ranks by one explicit all-reduce.
Either skips an update whose gradients are not finite and counts it.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from ..models.objective import VAEOutput, checked_value
from .builders import Owned, adamw


class ModelGroup:
    """The model's optimizer, through Accelerate (DDP, DeepSpeed, mixed precision)."""

    name = "model"

    def __init__(self, acc: Accelerator, model: nn.Module, optimizer: Any, clip: float, zero_stage: int | None,
                 base_lr: float) -> None:
        self.acc, self.model, self.optimizer, self.zero_stage = acc, model, optimizer, zero_stage
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = clip if clip > 0 else float("inf")
        self.base_lr = base_lr

    def set_lr(self, factor: float) -> None:
        """The lr of the next step: the recipe's peak times the schedule's ``factor``."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * factor

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: torch.Tensor) -> tuple[float, bool]:
        """Clip and step; returns the gradient norm and whether the update was applied. A non-finite update is
        skipped: by the fp16 GradScaler or DeepSpeed themselves (they also lower the loss scale; DeepSpeed has
        already stepped inside ``backward``), otherwise here."""
        if self.zero_stage is not None:
            norm = self.acc.clip_grad_norm_(self.params, self.clip)  # DeepSpeed: its own norm, its own clipping
        else:
            self.acc.unscale_gradients()  # fp16: the true gradients (no-op otherwise)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        norm = float("nan") if norm is None else float(norm)
        applied = True
        if self.acc.scaler is not None or self.zero_stage is not None:
            self.optimizer.step()
            applied = not self.optimizer.step_was_skipped
        elif math.isfinite(norm) and bool(torch.isfinite(loss.detach())):
            self.optimizer.step()
        else:
            applied = False
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied


class OwnedGroup:
    """A loss term's own module with its own AdamW, trained on ``owned_loss`` at the steps its cadence says."""

    def __init__(self, owned: Owned, acc: Accelerator, grad_accum: int, origin: str) -> None:
        self.owned, self.acc, self.grad_accum, self.origin = owned, acc, grad_accum, origin
        self.name = owned.name
        owned.module.to(acc.device)
        self.params = [p for p in owned.module.parameters() if p.requires_grad]
        o = owned.optim
        self.optimizer = adamw(self.params, o.lr, o.betas, o.weight_decay)
        self.clip = o.grad_clip if o.grad_clip > 0 else float("inf")
        self.skipped = 0  # non-finite updates skipped (counted, checkpointed through TrainerState)

    def active(self, step: int) -> bool:
        return self.owned.optim.active(step)

    def backward(self, out: VAEOutput, target: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """Accumulate the gradients of this micro-batch's objective; ``out`` must be detached. Returns the
        objective (``loss``) and the extras it logs, by name."""
        with self.acc.autocast():
            result = self.owned.loss.owned_loss(self.owned.key, out, target, step)
        value = checked_value(result, self.name, self.origin).value.float()
        (value / self.grad_accum).backward()
        return {"loss": value.detach(), **{k: torch.as_tensor(v).detach() for k, v in result.logs.items()}}

    def step(self) -> tuple[float, bool]:
        """Average gradients over ranks (collective), clip, step unless non-finite; returns (norm, applied)."""
        all_reduce_gradients(self.params, self.acc.num_processes)
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True))
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        else:
            self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied


def all_reduce_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over all ranks in one flat all-reduce (collective; a parameter
    without a gradient counts as zero)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@contextlib.contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Within the block ``params`` get no gradients (the model's step leaves owned modules alone)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
