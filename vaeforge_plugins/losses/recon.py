"""``recon``: reconstruction loss between the decoder output and the clean target.

Scale: ``reduction=sum`` (default) sums over channels and pixels of each image and averages over the batch, the
log-likelihood scale at which beta=1 gives the ELBO; ``reduction=mean`` averages over pixels too (then a useful
beta is about 1 / number of pixels).

``kind=gaussian_nll`` is the negative log-likelihood of a Gaussian decoder N(sigmoid(logits), sigma^2) with ONE
learned log-scale ``log sigma`` (trained with the model, saved in the checkpoint): the decoder learns how sharp
it can be, which balances reconstruction against KL by itself instead of through a tuned beta (Rybkin et al.,
"Simple and Effective VAE Training with Calibrated Decoders", 2021). With ``reduction=sum`` it is in nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaeforge.api import LossTerm, LossValue, VAEOutput, choice, register_loss

KINDS = ("mse", "l1", "bce", "gaussian_nll")
REDUCTIONS = ("sum", "mean")
MIN_LOG_SCALE = -7.0  # sigma >= 1e-3 (a quarter of an 8-bit level): keeps 1 / sigma^2 finite in bf16


@dataclass
class ReconConfig:
    kind: str = choice("mse", KINDS)  # bce is on logits (targets in [0, 1]); gaussian_nll learns sigma
    reduction: str = choice("sum", REDUCTIONS)  # over the pixels of an image; always the mean over the batch
    init_log_scale: float = -2.0  # gaussian_nll: initial log sigma (sigma = 0.135, about a 17 dB decoder)


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-pixel -log N(target; mean, exp(log_scale)^2), in nats."""
    return 0.5 * ((target - mean) * torch.exp(-log_scale)).square() + log_scale + 0.5 * math.log(2 * math.pi)


@register_loss("recon", config=ReconConfig)
class Recon(LossTerm):
    def __init__(self, cfg: ReconConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.kind == "gaussian_nll":
            # shape [1], not []: DeepSpeed cannot broadcast a 0-dim parameter
            self.log_scale = nn.Parameter(torch.full((1,), float(cfg.init_log_scale)))

    def per_pixel(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss at every channel and pixel, ``[B, C, H, W]``."""
        kind = self.cfg.kind
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        mean = torch.sigmoid(logits)
        if kind == "gaussian_nll":
            return gaussian_nll(mean, target, self.log_scale.clamp_min(MIN_LOG_SCALE))
        return (mean - target).square() if kind == "mse" else (mean - target).abs()

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        logits = out.logits.float()
        per_image = self.per_pixel(logits, target).flatten(1)
        per_image = per_image.sum(1) if self.cfg.reduction == "sum" else per_image.mean(1)
        logs: dict[str, float | torch.Tensor] = {"mse": (torch.sigmoid(logits) - target).square().mean()}
        if self.cfg.kind == "gaussian_nll":
            logs["sigma"] = self.log_scale.detach().exp()[0]
        return LossValue(per_image.mean(), logs)
