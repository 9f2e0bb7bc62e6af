"""``unet``: U-Net-style convolutional stages (residual double-conv blocks, GroupNorm, SiLU, down/up sampling),
with optional self-attention at chosen (low) resolutions.

No activations pass around the latent: the decoder sees only z, so sampling and attribute editing work.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vaeforge.api import (HEADS, BackboneParts, ConfigError, ImageSpec, at_least, choice, register_backbone,
                          upsampling_head)


@dataclass
class UNetConfig:
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # one stage per width, each halves H, W
    blocks_per_stage: int = at_least(1, 1)  # residual blocks in each stage
    stem: int = choice(1, (1, 2, 4))  # stem conv stride (decoder ends in a pixel shuffle); no block at full resolution
    groups: int = 8  # GroupNorm groups (reduced for narrow layers)
    attention: list[int] = field(default_factory=list)  # feature-map sizes (e.g. [8, 4]) that get self-attention
    attention_heads: int = 4  # reduced until it divides the stage's width
    head: str = choice("pixel_shuffle", HEADS)  # last upsampling (stem > 1), see vaeforge.api.upsampling_head; the default (runs from before the option) draws a checkerboard, recipes use icnr_blur


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


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map (pre-GroupNorm, residual)."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        while channels % heads:
            heads -= 1
        self.norm = _norm(channels, groups)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        mixed, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + mixed.transpose(1, 2).reshape(b, c, h, w)


def _blocks(c_in: int, c_out: int, cfg: UNetConfig, size: int) -> list[nn.Module]:
    """One stage's residual blocks at feature-map size ``size``, each followed by attention if asked for."""
    layers: list[nn.Module] = []
    for i in range(cfg.blocks_per_stage):
        layers.append(ResBlock(c_in if i == 0 else c_out, c_out, cfg.groups))
        if size in cfg.attention:
            layers.append(SelfAttention(c_out, cfg.attention_heads, cfg.groups))
    return layers


def _check(cfg: UNetConfig, image: ImageSpec) -> None:
    depth = len(cfg.widths)
    if image.size % (cfg.stem * 2**depth):
        raise ConfigError(f"unet: image size {image.size} is not divisible by stem {cfg.stem} x 2**{depth} "
                          "(one halving per width)")
    sizes = [image.size // cfg.stem // 2**i for i in range(depth + 1)]
    unused = sorted(set(cfg.attention) - set(sizes[:-1]))
    if unused:
        raise ConfigError(f"unet: attention at sizes {unused}, but the stages run at {sizes[:-1]}")


@register_backbone("unet", config=UNetConfig)
def build(cfg: UNetConfig, image: ImageSpec, latent_dim: int) -> BackboneParts:
    _check(cfg, image)
    widths, g = cfg.widths, cfg.groups
    s = cfg.stem
    bottom = image.size // s // 2 ** len(widths)
    stem = (nn.Conv2d(image.channels, widths[0], 3, padding=1) if s == 1
            else nn.Conv2d(image.channels, widths[0], 2 * s, stride=s, padding=s // 2))
    enc: list[nn.Module] = [stem]
    c, size = widths[0], image.size // s
    for w in widths:
        enc += [*_blocks(c, w, cfg, size), nn.Conv2d(w, w, 3, stride=2, padding=1)]
        c, size = w, size // 2
    enc += [_norm(c, g), nn.SiLU(), nn.Flatten()]
    feature_dim = c * bottom * bottom

    dec: list[nn.Module] = [nn.Linear(latent_dim, feature_dim), nn.Unflatten(1, (c, bottom, bottom))]
    for w in reversed(widths):
        size *= 2
        dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, w, 3, padding=1), *_blocks(w, w, cfg, size)]
        c = w
    dec += [_norm(c, g), nn.SiLU(), *upsampling_head(c, image.channels, s, cfg.head)]
    return BackboneParts(nn.Sequential(*enc), nn.Sequential(*dec), feature_dim)
