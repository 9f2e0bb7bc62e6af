"""``resnet``: a timm CNN encoder (any ``timm.list_models()`` CNN name, e.g. resnet18, resnet50, efficientnet_b0,
convnext_nano) and a mirrored residual up-sampling decoder.

The encoder's deepest feature map is flattened into the features the posterior head reads; the decoder maps z
to a map of that shape and climbs back through the encoder's stages in reverse (same widths, same strides),
each stage an upsampling, a 3x3 convolution and timm ``BasicBlock``s with GroupNorm and SiLU. No activations pass
around the latent. ``pretrained_file`` loads ImageNet (or any) weights for the encoder from a local safetensors
file of the full timm model (its classifier is ignored); nothing is downloaded.

timm is imported where a model is built, not with the module: the plugin registry imports every plugin in every
process, and importing timm loads its whole model zoo (about a second of start-up).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import partial
from itertools import pairwise

import torch
from torch import nn

from vaeforge.api import (HEADS, BackboneParts, ConfigError, DataError, ImageSpec, choice, read_tensors,
                          register_backbone, upsampling_head)


@dataclass
class ResNetConfig:
    name: str = "resnet18"  # any timm CNN with features_only support
    pretrained_file: str = ""  # safetensors weights of the timm model; empty: random init
    decoder_blocks: int = 1  # BasicBlocks per decoder stage
    groups: int = 8  # GroupNorm groups in the decoder (reduced for narrow layers)
    head: str = choice("pixel_shuffle", HEADS)  # last upsampling, see vaeforge.api.upsampling_head; the default (runs from before the option) draws a checkerboard, recipes use icnr_blur


class LastFeatures(nn.Module):
    """A timm ``features_only`` model reduced to its deepest feature map, flattened to ``[B, C*h*w]``."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].flatten(1)


def _encoder(cfg: ResNetConfig, image: ImageSpec) -> nn.Module:
    import timm

    if not timm.is_model(cfg.name):
        close = ", ".join(difflib.get_close_matches(cfg.name, timm.list_models(), n=3)) or "none close"
        raise ConfigError(f"resnet: unknown timm model '{cfg.name}' (did you mean: {close}; all: timm.list_models())")
    try:
        encoder = timm.create_model(cfg.name, features_only=True, pretrained=False, in_chans=image.channels)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"resnet: timm model '{cfg.name}' has no features_only form ({exc})") from None
    if cfg.pretrained_file:
        _load_pretrained(encoder, cfg.pretrained_file)
    return encoder


def _load_pretrained(encoder: nn.Module, path: str) -> None:
    """Load the encoder's tensors from a timm model's safetensors file; every encoder tensor must be there."""
    _, state = read_tensors(path, "resnet: pretrained_file")
    missing = encoder.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise DataError(f"resnet: pretrained_file {path} lacks {len(missing)} encoder tensors, e.g. {missing[0]} "
                        "(weights of another model?)")


def _deepest_shape(encoder: nn.Module, image: ImageSpec) -> tuple[int, int, int]:
    """``(C, h, w)`` of the encoder's deepest feature map, from one probe pass in eval mode."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        shape = encoder(torch.zeros(1, image.channels, image.size, image.size))[-1].shape[1:]
    encoder.train(was_training)
    return tuple(shape)  # type: ignore[return-value]


def _decoder_stage(c_in: int, c_out: int, factor: int, cfg: ResNetConfig) -> list[nn.Module]:
    """Upsample by ``factor``, change width with a 3x3 conv, then residual blocks."""
    from timm.layers import GroupNorm
    from timm.models.resnet import BasicBlock

    norm = partial(GroupNorm, num_groups=math.gcd(cfg.groups, c_out))
    layers: list[nn.Module] = [nn.Upsample(scale_factor=factor, mode="nearest")] if factor > 1 else []
    layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
    layers += [BasicBlock(c_out, c_out, act_layer=nn.SiLU, norm_layer=norm) for _ in range(cfg.decoder_blocks)]
    return layers


def _decoder(cfg: ResNetConfig, image: ImageSpec, latent_dim: int, info, deepest: tuple[int, int, int]
             ) -> nn.Sequential:
    """Mirror of the encoder: at each stride the encoder's width, deepest first; then the stem's mirror back to
    full resolution: one convolution to ``channels x r x r`` values per position, rearranged into r x r pixels
    (pixel shuffle, ``head``), so nothing runs at full resolution, where convolutions cost the most."""
    from timm.layers import GroupNorm

    channels, reductions = info.channels(), info.reduction()
    c, h, w = deepest
    layers: list[nn.Module] = [nn.Linear(latent_dim, c * h * w), nn.Unflatten(1, (c, h, w))]
    for width, (r_in, r_out) in zip(reversed(channels[:-1]), pairwise(reversed(reductions))):
        layers += _decoder_stage(c, width, r_in // r_out, cfg)
        c = width
    r = reductions[0]
    layers += [GroupNorm(c, num_groups=math.gcd(cfg.groups, c)), nn.SiLU(),
               *upsampling_head(c, image.channels, r, cfg.head)]
    return nn.Sequential(*layers)


@register_backbone("resnet", config=ResNetConfig)
def build(cfg: ResNetConfig, image: ImageSpec, latent_dim: int) -> BackboneParts:
    encoder = _encoder(cfg, image)
    deepest = _deepest_shape(encoder, image)
    reduction = encoder.feature_info.reduction()[-1]
    if image.size % reduction or deepest[1] * reduction != image.size:
        raise ConfigError(f"resnet: image size {image.size} is not a multiple of {cfg.name}'s stride {reduction}")
    decoder = _decoder(cfg, image, latent_dim, encoder.feature_info, deepest)
    return BackboneParts(LastFeatures(encoder), decoder, feature_dim=math.prod(deepest))
