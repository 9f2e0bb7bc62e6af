"""``unet``: U-Net-style convolutional stages (residual double-conv blocks, GroupNorm, SiLU, down/up sampling).

No activations pass around the latent: the decoder sees only z, so sampling and attribute editing work.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vaeforge.api import ConfigError, BackboneParts, ImageSpec, register_backbone


@dataclass
class UNetConfig:
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # one stage per width, each halves H, W
    blocks_per_stage: int = 1
    groups: int = 8  # GroupNorm groups (reduced for narrow layers)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = groups
    while channels % g:
        g //= 2
    return nn.GroupNorm(g, channels)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU, plus a (projected) identity path."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out, groups), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _blocks(c_in: int, c_out: int, n: int, groups: int) -> list[nn.Module]:
    return [ResBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(n)]


@register_backbone("unet", config=UNetConfig)
def build(cfg: UNetConfig, image: ImageSpec, latent_dim: int) -> BackboneParts:
    widths, n, g = cfg.widths, cfg.blocks_per_stage, cfg.groups
    bottom = image.size // 2 ** len(widths)
    if bottom < 1 or image.size % 2 ** len(widths):
        raise ConfigError(f"unet: image size {image.size} is not divisible by 2**{len(widths)} (one per width)")
    enc: list[nn.Module] = [nn.Conv2d(image.channels, widths[0], 3, padding=1)]
    c = widths[0]
    for w in widths:
        enc += [*_blocks(c, w, n, g), nn.Conv2d(w, w, 3, stride=2, padding=1)]
        c = w
    enc += [_norm(c, g), nn.SiLU(), nn.Flatten()]
    feature_dim = c * bottom * bottom

    dec: list[nn.Module] = [nn.Linear(latent_dim, feature_dim), nn.Unflatten(1, (c, bottom, bottom))]
    for w in reversed(widths):
        dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, w, 3, padding=1), *_blocks(w, w, n, g)]
        c = w
    dec += [_norm(c, g), nn.SiLU(), nn.Conv2d(c, image.channels, 3, padding=1)]
    return BackboneParts(nn.Sequential(*enc), nn.Sequential(*dec), feature_dim)
