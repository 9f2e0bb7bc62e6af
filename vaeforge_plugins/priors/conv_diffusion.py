"""``conv_diffusion``: a small convolutional denoiser over latent tensors ``[c, h, w]`` (a spatial autoencoder's,
e.g. ``autoencoder_kl``), trained by conditional flow matching as ``flow_matching`` is (straight paths from noise to
data, the rectified-flow form of a diffusion model) and sampled by integrating its ODE from N(0, I) with
``sample_steps`` Heun steps. ``temperature`` scales the starting noise.

The velocity network keeps the latent's resolution: a 3x3 convolution in, ``blocks`` residual blocks (GroupNorm,
SiLU, two 3x3 convolutions, the time embedding added between them), one self-attention over all positions in the
middle (each latent position sees the whole face), and a 3x3 convolution out. Each value of the latent is
standardised on its own first, as the vector priors do, so it learns on unit-scale data whatever the KL weight
left the latents' scale at. Where a vector prior would model the latent as one long vector, this one shares its
filters over positions: far fewer parameters for a 4x16x16 latent, and local structure for free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vaeforge.api import ConfigError, Standardizer, at_least, register_prior
from vaeforge_plugins.priors.flow_matching import VelocityPrior

GROUPS = 8  # GroupNorm groups (fewer when they do not divide the width)
WIDTH_PER_CHANNEL, MIN_WIDTH = 8, 32  # default_width's rule


@dataclass
class ConvDiffusionConfig:
    width: int | None = at_least(8, None)  # the denoiser's feature maps (None: 8 per latent channel, at least 32)
    blocks: int = at_least(1, 4)  # residual blocks (the attention sits after half of them)
    steps: int = at_least(1, 8000)  # Adam steps of training (cosine learning-rate decay)
    batch_size: int = at_least(1, 64)  # latents per training step
    lr: float = 1e-3  # peak learning rate (AdamW)
    sample_steps: int = at_least(1, 32)  # Heun steps of the ODE from noise to latent (2 network evaluations each)


def default_width(channels: int) -> int:
    """The denoiser's width for ``channels`` latent channels: 8 per channel, at least 32. A width of 32 fitted a
    3- or 4-channel latent well and an 8-channel one poorly, where 64 did (docs/benchmarks.md#lfw_kl)."""
    return max(MIN_WIDTH, WIDTH_PER_CHANNEL * channels)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


class Block(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x))) + time)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
        self.time = nn.Linear(width, width)
        self.out = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.out(self.inp(h) + self.time(temb)[:, :, None, None])


class Attention(nn.Module):
    """Single-head self-attention over the positions of a feature map (pre-GroupNorm, residual)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = _norm(width)
        self.attn = nn.MultiheadAttention(width, 1, batch_first=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # [B, h*w, C]
        mixed, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return h + mixed.transpose(1, 2).reshape(h.shape)


class ConvVelocity(nn.Module):
    """v(x, t): latent tensors ``[B, c, h, w]`` and times ``[B]`` in [0, 1] -> velocities ``[B, c, h, w]``."""

    def __init__(self, channels: int, width: int, blocks: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), width // 2)), persistent=False)
        self.embed_time = nn.Sequential(nn.Linear(2 * (width // 2), width), nn.SiLU())
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.attention = Attention(width)
        self.out = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs
        temb = self.embed_time(torch.cat([angles.sin(), angles.cos()], 1))
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            if i == len(self.blocks) // 2:
                h = self.attention(h)
            h = block(h, temb)
        return self.out(h)


@register_prior("conv_diffusion", config=ConvDiffusionConfig)
class ConvDiffusion(VelocityPrior):
    """A convolutional velocity field over standardised latent tensors."""

    vector_only = False

    def __init__(self, cfg: ConvDiffusionConfig, shape: tuple[int, ...]) -> None:
        super().__init__(cfg, shape)
        if len(shape) != 3:
            raise ConfigError(f"conv_diffusion models latent tensors [c, h, w] (a spatial backbone such as "
                              f"autoencoder_kl); this model's latents are {list(shape)}: use flow_matching or flow")
        self.standardize = Standardizer(math.prod(shape))
        self.velocity = ConvVelocity(shape[0], cfg.width or default_width(shape[0]), cfg.blocks)
