"""``kl``: KL(q(z|x) || N(0, I)), summed over latent dims and averaged over the batch, times beta.

beta ramps linearly from 0 over ``warmup_steps`` (against posterior collapse early in training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vaeforge.api import LossTerm, LossValue, VAEOutput, kl_per_dim, register_loss


@dataclass
class KLConfig:
    beta: float = 1.0
    warmup_steps: int = 0  # linear warm-up of beta from 0; 0 disables


@register_loss("kl", config=KLConfig)
class KL(LossTerm):
    def __init__(self, cfg: KLConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def beta(self, step: int) -> float:
        if self.cfg.warmup_steps <= 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, step / self.cfg.warmup_steps)

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        kl = kl_per_dim(out.mu, out.logvar).sum(1).mean()
        beta = self.beta(step)
        return LossValue(beta * kl, {"beta": beta, "nats": kl})
