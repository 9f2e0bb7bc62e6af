"""Image and latent metrics shared by training, tasks and evaluation."""
from __future__ import annotations

import torch


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of each latent dim for each sample, ``[B, D]``."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def active_units(kl_dims: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dims whose mean KL (nats) exceeds ``threshold``: the ones the model actually uses."""
    return int((kl_dims.mean(0) > threshold).sum())


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) of each image pair in [0, 1], ``[B]``."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)
