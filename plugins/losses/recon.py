"""``recon``: reconstruction loss between the decoder output and the clean target.

Scale: ``reduction=sum`` (default) sums over channels and pixels of each image and averages over the batch, the
log-likelihood scale at which beta=1 gives the ELBO; ``reduction=mean`` averages over pixels too (then a useful
beta is about 1 / number of pixels).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaeforge.api import ConfigError, LossTerm, LossValue, VAEOutput, register_loss

KINDS = ("mse", "l1", "bce")
REDUCTIONS = ("sum", "mean")


@dataclass
class ReconConfig:
    kind: str = "mse"  # mse | l1 | bce (bce on logits, targets in [0, 1])
    reduction: str = "sum"  # sum | mean over pixels of an image; always mean over the batch


@register_loss("recon", config=ReconConfig)
class Recon(LossTerm):
    def __init__(self, cfg: ReconConfig) -> None:
        super().__init__()
        if cfg.kind not in KINDS or cfg.reduction not in REDUCTIONS:
            raise ConfigError(f"recon: kind must be one of {KINDS} and reduction one of {REDUCTIONS}")
        self.cfg = cfg

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        logits = out.logits.float()
        if self.cfg.kind == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        elif self.cfg.kind == "mse":
            per_pixel = (torch.sigmoid(logits) - target).square()
        else:
            per_pixel = (torch.sigmoid(logits) - target).abs()
        per_image = per_pixel.flatten(1)
        per_image = per_image.sum(1) if self.cfg.reduction == "sum" else per_image.mean(1)
        mse = (torch.sigmoid(logits) - target).square().mean()
        return LossValue(per_image.mean(), {"mse": mse})
