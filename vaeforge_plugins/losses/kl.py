"""``kl``: KL(q(z|x) || N(0, I)), summed over latent dims and averaged over the batch, times beta(step).

Schedules of beta (against posterior collapse early in training): ``constant``; ``linear`` warm-up from 0 over
``warmup_steps``; ``cyclical`` (Fu et al., 2019): every ``cycle_steps`` beta restarts at 0 and ramps linearly to
its value over the first ``ramp_fraction`` of the cycle, then holds. ``free_bits`` (nats per latent dim, Kingma et
al., 2016) charges each dim at least that much of its batch-mean KL, so a dim below it feels no KL gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vaeforge.api import LossTerm, LossValue, VAEOutput, above, at_least, choice, kl_per_dim, register_loss

SCHEDULES = ("constant", "linear", "cyclical")


@dataclass
class KLConfig:
    beta: float = at_least(0, 1.0)  # the KL weight after warm-up (1 with recon's sum reduction: the ELBO)
    schedule: str = choice("linear", SCHEDULES)  # how beta reaches its value
    warmup_steps: int = at_least(0, 0)  # linear: steps from beta=0 to beta (0: constant)
    cycle_steps: int = at_least(1, 1000)  # cyclical: steps per cycle
    ramp_fraction: float = above(0, 0.5, high=1)  # cyclical: part of each cycle spent ramping up
    free_bits: float = at_least(0, 0.0)  # nats per latent dim charged at least; 0 disables


def beta_at(cfg: KLConfig, step: int) -> float:
    """The KL weight at optimizer step ``step``."""
    if cfg.schedule == "linear" and cfg.warmup_steps > 0:
        return cfg.beta * min(1.0, step / cfg.warmup_steps)
    if cfg.schedule == "cyclical":
        phase = (step % cfg.cycle_steps) / cfg.cycle_steps
        return cfg.beta * min(1.0, phase / cfg.ramp_fraction)
    return cfg.beta


@register_loss("kl", config=KLConfig)
class KL(LossTerm):
    def __init__(self, cfg: KLConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def beta(self, step: int) -> float:
        return beta_at(self.cfg, step)

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        per_dim = kl_per_dim(out.mu, out.logvar).mean(0)  # batch-mean KL of each latent dim, nats
        charged = per_dim.clamp_min(self.cfg.free_bits).sum() if self.cfg.free_bits > 0 else per_dim.sum()
        beta = self.beta(step)
        logs: dict[str, float | torch.Tensor] = {"beta": beta, "nats": per_dim.sum()}
        if self.cfg.free_bits > 0:
            logs["charged_nats"] = charged
        return LossValue(beta * charged, logs)
