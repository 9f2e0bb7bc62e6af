"""A hand-written training step for a recipe: the baseline the engine's speed is compared with.

The recipe's model and loss terms (vaeforge.models.objective.LossSet: the same code the engine runs), AdamW and gradient
clipping in their fastest PyTorch forms (fused, foreach: as the engine runs them) and the precision the engine
resolves from the recipe; nothing else (no loader, EMA, logging or checkpoints).
"""
from __future__ import annotations

import torch

from vaeforge.models.objective import LossSet
from vaeforge.models.vae import ImageSpec, build_model
from vaeforge.train.distributed import Launch, resolve_precision


class BareStep:
    """``step(x, i)`` trains the recipe's model one step on images ``x`` in [0, 1]."""

    def __init__(self, cfg, image_size: int) -> None:
        torch.manual_seed(0)
        self.model = build_model(cfg.model, ImageSpec(image_size))
        self.losses = LossSet(cfg.losses)
        self.params = [*self.model.parameters(), *self.losses.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), fused=True)
        self.clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        self.bf16 = resolve_precision(cfg.trainer.mixed_precision, Launch.from_env()) == "bf16"  # as the engine

    def step(self, x: torch.Tensor, i: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss, _ = self.losses(self.model(x), x, i)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.optimizer.step()
