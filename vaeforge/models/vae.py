"""The VAE: encoder backbone -> posterior head (mu, logvar) -> reparameterised z -> decoder backbone.

Latents are vectors ``[B, latent_dim]`` (the posterior head is a linear layer on the encoder's features) or, for a
backbone that declares a ``latent_size`` (a spatial-latent autoencoder, latent-diffusion style), tensors
``[B, latent_dim, s, s]`` (the head is a 1x1 convolution on the encoder's feature maps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config.loader import validate_options
from ..errors import PluginError
from ..registry import REGISTRY

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in fp16/bf16


@dataclass(frozen=True)
class ImageSpec:
    """The shape of the images a backbone is built for."""

    size: int
    channels: int = 3


@dataclass
class BackboneParts:
    """What a backbone plugin builds: ``encoder`` maps images in [-1, 1] to ``[B, feature_dim]`` features;
    ``decoder`` maps latents ``[B, latent_dim]`` to image logits ``[B, C, H, W]`` (sigmoid gives [0, 1]).

    A spatial backbone sets ``latent_size`` s > 0: its encoder gives feature maps ``[B, feature_dim, s, s]`` and its
    decoder takes latent tensors ``[B, latent_dim, s, s]`` (``latent_dim`` is then the latent channels)."""

    encoder: nn.Module
    decoder: nn.Module
    feature_dim: int
    latent_size: int = 0  # 0: vector latents


@dataclass
class VAEOutput:
    """One forward pass: decoder logits, posterior parameters and the latent that was decoded.

    ``last_layer`` is the decoder's last weight (its last parameter with ndim >= 2; ``None`` when it has none):
    a loss term that balances itself against the others by their gradients there (an adversarial term's adaptive
    weight) differentiates with respect to it."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    last_layer: torch.Tensor | None = None

    @property
    def recon(self) -> torch.Tensor:
        """Reconstruction in [0, 1]."""
        return torch.sigmoid(self.logits)


class VAE(nn.Module):
    """A Gaussian-posterior VAE around any backbone; images in and out are in [0, 1]."""

    def __init__(self, parts: BackboneParts, latent_dim: int, image: ImageSpec) -> None:
        super().__init__()
        self.encoder = parts.encoder
        self.decoder = parts.decoder
        s = parts.latent_size
        self.posterior = (nn.Conv2d(parts.feature_dim, 2 * latent_dim, 1) if s
                          else nn.Linear(parts.feature_dim, 2 * latent_dim))
        self.latent_shape: tuple[int, ...] = (latent_dim, s, s) if s else (latent_dim,)
        self.latent_dim = math.prod(self.latent_shape)  # latent dims in all (the vector's size, or c x s x s)
        self.feature_shape = (parts.feature_dim, s, s) if s else (parts.feature_dim,)
        self.image = image
        # by name, not the tensor: a second reference would register the weight twice (and resolving it per
        # forward follows whatever replaces the parameter: EMA copies, DeepSpeed)
        self.last_layer_name = last_weight_name(self.decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)`` of images ``x`` in [0, 1]."""
        mu, logvar = self.posterior(self.encoder(x * 2.0 - 1.0)).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for latents ``z``."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor, sample: bool = True) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        last = self.decoder.get_parameter(self.last_layer_name) if self.last_layer_name else None
        return VAEOutput(self.decode_logits(z), mu, logvar, z, last)


def last_weight_name(decoder: nn.Module) -> str:
    """The name of ``decoder``'s last parameter with ndim >= 2 (its output layer's weight), "" if none."""
    names = [name for name, p in decoder.named_parameters() if p.dim() >= 2]
    return names[-1] if names else ""


def build_model(model_cfg, image: ImageSpec) -> VAE:
    """Build the VAE of a run config's ``model`` section through the backbone registry, checked by one forward."""
    plugin = REGISTRY.get("backbone", model_cfg.backbone.name)
    args = validate_options(plugin.config, model_cfg.backbone.args, f"backbone '{plugin.name}'")
    parts = plugin.target(args, image, int(model_cfg.latent_dim))
    where = f"backbone '{plugin.name}' ({plugin.origin})"
    if not isinstance(parts, BackboneParts):
        raise PluginError(f"{where} must return BackboneParts(encoder, decoder, feature_dim[, latent_size]), got "
                          f"{type(parts).__name__}")
    vae = VAE(parts, int(model_cfg.latent_dim), image)
    check_shapes(vae, where)
    return vae


@torch.no_grad()
def check_shapes(vae: VAE, where: str) -> None:
    """One forward of two blank images in eval mode (no RNG drawn, no statistics moved): a backbone whose
    encoder or decoder output has the wrong shape fails here, naming the module, not steps later in a loss."""
    image, batch = vae.image, 2
    was_training = vae.training
    vae.eval()
    try:
        features = vae.encoder(torch.zeros(batch, image.channels, image.size, image.size))
        _expect(features, [batch, *vae.feature_shape], f"{where}: encoder", "feature_dim (and latent_size)")
        logits = vae.decoder(torch.zeros(batch, *vae.latent_shape))
        _expect(logits, [batch, image.channels, image.size, image.size], f"{where}: decoder",
                "the image shape [B, channels, image_size, image_size]")
    finally:
        vae.train(was_training)


def _expect(tensor: torch.Tensor, shape: list[int], what: str, fix: str) -> None:
    if not isinstance(tensor, torch.Tensor) or list(tensor.shape) != shape:
        got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PluginError(f"{what} output is {got}, expected {shape}: make it match {fix}")
