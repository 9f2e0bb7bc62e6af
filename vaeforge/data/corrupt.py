"""Input corruptions for denoising VAEs: the model sees a corrupted image and is trained to give the clean one.

A spec names one kind and its strength range; each image draws its own strength from that range:
``gaussian`` (noise sigma), ``salt_pepper`` (fraction of pixels set to 0 or 1), ``jpeg`` (JPEG quality),
``mask`` (fraction of the image covered by a grey box), ``none``.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, unknown_choice

KINDS = ("none", "gaussian", "salt_pepper", "jpeg", "mask")


@dataclass
class CorruptionConfig:
    kind: str = "none"  # none | gaussian | salt_pepper | jpeg | mask
    strength: list[float] = field(default_factory=lambda: [0.05, 0.3])  # range each image draws from


def parse_spec(spec: str) -> CorruptionConfig:
    """``gaussian:0.2`` (fixed strength) or ``gaussian:0.1-0.3`` (range) -> a config."""
    kind, _, strength = spec.partition(":")
    cfg = CorruptionConfig(kind=kind)
    if strength:
        try:
            low, _, high = strength.partition("-")
            cfg.strength = [float(low), float(high or low)]
        except ValueError:
            raise ConfigError(f"corruption '{spec}': strength must be a number or a range like 0.1-0.3") from None
    check(cfg)
    return cfg


def check(cfg: CorruptionConfig) -> None:
    if cfg.kind not in KINDS:
        raise unknown_choice("corruption", cfg.kind, KINDS)
    if len(cfg.strength) != 2 or cfg.strength[0] > cfg.strength[1]:
        raise ConfigError(f"corruption strength must be [low, high] with low <= high, got {list(cfg.strength)}")


def _strengths(cfg: CorruptionConfig, n: int, gen: torch.Generator) -> torch.Tensor:
    low, high = cfg.strength
    return low + (high - low) * torch.rand(n, generator=gen)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = image.mul(255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=max(1, min(95, quality)))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).copy()
    return torch.from_numpy(decoded).permute(2, 0, 1).float() / 255.0


def _mask(image: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    _, h, w = image.shape
    side = max(1, round((fraction ** 0.5) * min(h, w)))
    top, left = (int(torch.randint(0, d - side + 1, (1,), generator=gen)) for d in (h, w))
    out = image.clone()
    out[:, top : top + side, left : left + side] = 0.5
    return out


def corrupt(x: torch.Tensor, cfg: CorruptionConfig, gen: torch.Generator) -> torch.Tensor:
    """Corrupted copy of float images ``x`` ``[B, C, H, W]`` in [0, 1] (on the CPU), reproducible via ``gen``."""
    if cfg.kind == "none":
        return x
    s = _strengths(cfg, x.shape[0], gen)
    if cfg.kind == "gaussian":
        noise = torch.randn(x.shape, generator=gen) * s.view(-1, 1, 1, 1)
        return (x + noise).clamp(0, 1)
    if cfg.kind == "salt_pepper":
        u = torch.rand(x.shape[0], 1, *x.shape[2:], generator=gen)
        salt = torch.rand(u.shape, generator=gen) < 0.5
        hit = u < s.view(-1, 1, 1, 1)
        return torch.where(hit, salt.float().expand_as(x), x)
    if cfg.kind == "jpeg":
        return torch.stack([_jpeg(im, int(q)) for im, q in zip(x, s.round())])
    return torch.stack([_mask(im, float(f), gen) for im, f in zip(x, s)])


def describe(cfg: CorruptionConfig) -> str:
    low, high = cfg.strength
    return cfg.kind if cfg.kind == "none" else f"{cfg.kind}:{low:g}" + (f"-{high:g}" if high != low else "")

