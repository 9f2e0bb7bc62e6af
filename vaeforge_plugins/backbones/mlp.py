"""``mlp``: a fully connected encoder and decoder, for small images and teaching."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from vaeforge.api import BackboneParts, ImageSpec, register_backbone


@dataclass
class MLPConfig:
    hidden: list[int] = field(default_factory=lambda: [512, 256])  # encoder widths; the decoder mirrors them


def _stack(widths: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [nn.Linear(w_in, w_out), nn.SiLU()]
    return layers


@register_backbone("mlp", config=MLPConfig)
def build(cfg: MLPConfig, image: ImageSpec, latent_dim: int) -> BackboneParts:
    pixels = image.channels * image.size * image.size
    encoder = nn.Sequential(nn.Flatten(), *_stack([pixels, *cfg.hidden]))
    back = [latent_dim, *reversed(cfg.hidden)]
    decoder = nn.Sequential(
        *_stack(back),
        nn.Linear(back[-1], pixels),
        nn.Unflatten(1, (image.channels, image.size, image.size)),
    )
    return BackboneParts(encoder, decoder, feature_dim=cfg.hidden[-1])
