"""``autoencoder_kl``: a spatial-latent KL autoencoder in the style of latent-diffusion's ``AutoencoderKL``
(Rombach et al., 2022): residual blocks with GroupNorm and SiLU, one halving per level after the first, and a
middle of residual block, self-attention, residual block at the lowest resolution.

The latent is a tensor ``[latent_dim, s, s]`` with s = image size / f, f = 2 ** (len(widths) - 1) (f = 4 for three
widths, 8 for four): the encoder ends in a 3x3 convolution to ``2 * latent_dim`` feature maps, the engine's posterior
head (a 1x1 convolution, latent-diffusion's ``quant_conv``) gives mean and log-variance per position. The decoder
mirrors it with ``blocks_per_stage + 1`` blocks per level and upsamples by nearest-neighbour resizing followed by a
3x3 convolution (resize-convolution: no sub-pixel filters, so no checkerboard), ending in a 3x3 convolution at
full resolution. No activations pass around the latent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from vaeforge.api import BackboneParts, ConfigError, ImageSpec, at_least, register_backbone
from vaeforge_plugins.backbones.unet import ResBlock, SelfAttention, _norm


@dataclass
class AutoencoderKLConfig:
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 256])  # channels per level; f = 2 ** (levels - 1)
    blocks_per_stage: int = at_least(1, 1)  # residual blocks per encoder level (the decoder has one more)
    groups: int = 32  # GroupNorm groups (reduced for narrow layers)
    attention_heads: int = at_least(1, 1)  # heads of the self-attention at the lowest resolution (latent-diffusion: 1)


def factor(cfg: AutoencoderKLConfig) -> int:
    """The downsampling factor f from image to latent."""
    return 2 ** (len(cfg.widths) - 1)


def _middle(c: int, cfg: AutoencoderKLConfig) -> list[nn.Module]:
    return [ResBlock(c, c, cfg.groups), SelfAttention(c, cfg.attention_heads, cfg.groups), ResBlock(c, c, cfg.groups)]


def _encoder(cfg: AutoencoderKLConfig, image: ImageSpec, latent_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(image.channels, cfg.widths[0], 3, padding=1)]
    c = cfg.widths[0]
    for level, w in enumerate(cfg.widths):
        for _ in range(cfg.blocks_per_stage):
            layers.append(ResBlock(c, w, cfg.groups))
            c = w
        if level < len(cfg.widths) - 1:
            layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
    return nn.Sequential(*layers, *_middle(c, cfg), _norm(c, cfg.groups), nn.SiLU(),
                         nn.Conv2d(c, 2 * latent_dim, 3, padding=1))


def _decoder(cfg: AutoencoderKLConfig, image: ImageSpec, latent_dim: int) -> nn.Sequential:
    c = cfg.widths[-1]
    layers: list[nn.Module] = [nn.Conv2d(latent_dim, c, 3, padding=1), *_middle(c, cfg)]
    for level, w in reversed(list(enumerate(cfg.widths))):
        for _ in range(cfg.blocks_per_stage + 1):
            layers.append(ResBlock(c, w, cfg.groups))
            c = w
        if level > 0:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
    return nn.Sequential(*layers, _norm(c, cfg.groups), nn.SiLU(), nn.Conv2d(c, image.channels, 3, padding=1))


@register_backbone("autoencoder_kl", config=AutoencoderKLConfig)
def build(cfg: AutoencoderKLConfig, image: ImageSpec, latent_dim: int) -> BackboneParts:
    if not cfg.widths or min(cfg.widths) < 1:
        raise ConfigError(f"autoencoder_kl: widths must list at least one positive width, got {cfg.widths}")
    f = factor(cfg)
    if image.size % f:
        raise ConfigError(f"autoencoder_kl: image size {image.size} is not divisible by f = {f} "
                          f"(2 ** (len(widths) - 1), widths {cfg.widths})")
    return BackboneParts(_encoder(cfg, image, latent_dim), _decoder(cfg, image, latent_dim), 2 * latent_dim,
                         latent_size=image.size // f)
