"""``adversarial``: a PatchGAN discriminator judges patches of the reconstruction against the clean target, and the
model is trained to fool it (sharper detail than pixel and perceptual losses alone give).

The discriminator (pix2pix / taming-transformers' N-layer PatchGAN) is ``disc_layers`` 4x4 stride-2 convolutions,
one 4x4 stride-1 convolution and a 1-channel 4x4 head: one logit per overlapping patch (for 64x64 images and 3
layers a 6x6 map of 70x70-pixel patches). Its norm is GroupNorm or none, never BatchNorm: a norm that mixes the
images of a batch would make the logits depend on how a batch is split over ranks and micro-batches. Images are
RGB, mapped to [-1, 1].

The discriminator is an owned module (see docs/plugins.md): the engine trains it with its own AdamW from optimizer
step ``start`` on, every ``disc_every``-th step, on ``owned_loss``, half the sum of its loss on real (the target)
and on fake (the detached reconstruction) patches, each a mean over patches and batch:
hinge ``relu(1 - D(real)) + relu(1 + D(fake))``, non_saturating ``softplus(-D(real)) + softplus(D(fake))``.

The model's term (``forward``) is the generator loss, ``-D(fake)`` (hinge) or ``softplus(-D(fake))``
(non_saturating), averaged over patches and batch, times the warm-up factor (0 before ``start``, then linear from
0 to 1 over ``warmup_steps``) and, with ``adaptive=true``, latent-diffusion's adaptive weight
``||grad_L reference|| / (||grad_L generator|| + 1e-4)`` clamped to [0, max_adaptive_weight] and detached, where
L is the decoder's last weight and ``reference`` the weighted sum of the other loss terms: the term's weight is
then the ratio of its gradient to theirs at the decoder's output layer, whatever their scale. With
``adaptive_every=k`` it is computed on every k-th step from ``start`` and reused in between (a buffer, checkpointed
with the loss weights, so a resumed run reuses the same value; under DDP the steps between take rank 0's). It is
computed in training only; validation (no gradients) uses weight 1, so ``val/<term>`` is the generator loss
times the warm-up factor and the term's weight. ``adaptive=true`` is refused under DeepSpeed ZeRO-3 (the last
layer is partitioned there).

Cost: with ``adaptive=true`` a step that computes the weight backpropagates the other terms and the generator loss
to the decoder's last layer once more (through LPIPS if the recipe has it); the discriminator's step runs it
forward on real and fake images and backward. ``adaptive_every`` and ``disc_every`` make those steps rarer
(docs/benchmarks.md#lfw_unet_adv measures what each costs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vaeforge.api import (ConfigError, LossTerm, LossValue, OwnedModule, OwnedOptim, PluginError, VAEOutput, above,
                          at_least, choice, register_loss)

LOSSES = ("hinge", "non_saturating")
NORMS = ("group", "none")
MAX_WIDTH_FACTOR = 8  # the discriminator's channels double per layer up to this multiple of disc_width
GROUPS = 32  # GroupNorm groups (fewer when the channels are not a multiple)
GRAD_EPS = 1e-4  # latent-diffusion's guard of the adaptive weight's denominator


@dataclass
class AdversarialConfig:
    loss: str = choice("hinge", LOSSES)  # GAN objective: hinge (taming, latent-diffusion) or non_saturating (softplus)
    disc_layers: int = at_least(1, 3)  # stride-2 4x4 convs of the discriminator, then one stride-1 conv and the head
    disc_width: int = at_least(1, 64)  # channels of the discriminator's first conv, doubled per layer up to 8x
    disc_norm: str = choice("group", NORMS)  # the discriminator's norm: group (GroupNorm, per image) or none
    disc_lr: float = above(0, 2e-4)  # the discriminator's AdamW learning rate (constant)
    disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # the discriminator's AdamW betas
    disc_every: int = at_least(1, 1)  # the discriminator trains on every disc_every-th optimizer step from start
    start: int = at_least(0, 0)  # optimizer step from which the discriminator trains and the generator term counts
    warmup_steps: int = at_least(0, 0)  # the generator term's factor ramps linearly from 0 at start to 1 after these
    adaptive: bool = True  # weight the generator term by the gradient-norm ratio at the decoder's last layer
    max_adaptive_weight: float = above(0, 1e4)  # clamp of the adaptive weight (latent-diffusion: 1e4)
    adaptive_every: int = at_least(1, 1)  # compute the adaptive weight every k-th step from start, reuse it between


def discriminator(cfg: AdversarialConfig, channels: int = 3) -> nn.Sequential:
    """The N-layer PatchGAN: images in [-1, 1] ``[B, C, H, W]`` -> patch logits ``[B, 1, h, w]``."""
    widths = [cfg.disc_width * min(2 ** i, MAX_WIDTH_FACTOR) for i in range(cfg.disc_layers + 1)]
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
    for i in range(1, cfg.disc_layers + 1):
        stride = 2 if i < cfg.disc_layers else 1
        if cfg.disc_norm == "group":
            layers += [nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1, bias=False),
                       nn.GroupNorm(math.gcd(GROUPS, widths[i]), widths[i])]
        else:
            layers.append(nn.Conv2d(widths[i - 1], widths[i], 4, stride, 1))
        layers.append(nn.LeakyReLU(0.2))
    net = nn.Sequential(*layers, nn.Conv2d(widths[-1], 1, 4, 1, 1))
    net.apply(_gan_init)
    return net


def _gan_init(module: nn.Module) -> None:
    """DCGAN's initialisation (as pix2pix and taming): conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Half the sum of the real and fake losses, each a mean over patches and batch."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The model's loss on the discriminator's logits of its reconstructions, a mean over patches and batch."""
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def gradient_norm(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """||d value / d param|| (0 when ``value`` does not depend on ``param``); the graph is kept for the backward."""
    (grad,) = torch.autograd.grad(value, param, retain_graph=True, allow_unused=True)
    return torch.zeros((), device=value.device) if grad is None else grad.float().norm()


@register_loss("adversarial", config=AdversarialConfig)
class Adversarial(LossTerm):
    def __init__(self, cfg: AdversarialConfig) -> None:
        super().__init__()
        if len(cfg.disc_betas) != 2 or not all(0 <= b < 1 for b in cfg.disc_betas):
            raise ConfigError(f"loss 'adversarial': disc_betas must be two numbers in [0, 1), got {cfg.disc_betas}")
        self.cfg = cfg
        self.balanced = cfg.adaptive  # the engine then passes the other terms' sum as ``reference``
        self.discriminator = discriminator(cfg)
        if cfg.adaptive and cfg.adaptive_every > 1:  # the weight reused between computations
            self.register_buffer("adaptive_cache", torch.ones(()))

    def owned_modules(self) -> dict[str, OwnedModule]:
        c = self.cfg
        return {"discriminator": OwnedModule(self.discriminator,
                                             OwnedOptim(lr=c.disc_lr, betas=tuple(c.disc_betas), every=c.disc_every,
                                                        start=c.start))}

    def warmup(self, step: int) -> float:
        """The generator term's factor at optimizer step ``step``: 0 before ``start``, then a linear ramp to 1."""
        c = self.cfg
        if step < c.start:
            return 0.0
        return 1.0 if c.warmup_steps == 0 else min(1.0, (step - c.start) / c.warmup_steps)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator's patch logits (fp32) of images in [0, 1]."""
        if images.shape[1] != 3:
            raise PluginError(f"loss 'adversarial' scores RGB images, got {images.shape[1]} channels: "
                              "remove the adversarial term for this data")
        return self.discriminator(images * 2.0 - 1.0).float()

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int,
                reference: torch.Tensor | None = None) -> LossValue:
        factor = self.warmup(step)
        if step < self.cfg.start:  # a zero in the graph: the total stays differentiable whatever the other terms
            return LossValue(out.logits.sum() * 0.0, {"warmup": factor})
        fake = self.logits(out.recon)
        loss = generator_loss(self.cfg.loss, fake)
        weight = self.adaptive_weight(loss, reference, out.last_layer, step)
        return LossValue(weight * factor * loss, {"warmup": factor, "adaptive_weight": weight,
                                                  "generator": loss.detach(), "logits_fake": fake.detach().mean()})

    def adaptive_weight(self, loss: torch.Tensor, reference: torch.Tensor | None,
                        last_layer: torch.Tensor | None, step: int) -> torch.Tensor:
        """latent-diffusion's weight ||grad reference|| / (||grad loss|| + 1e-4) at the decoder's last layer,
        clamped and detached (the cached one between every ``adaptive_every``-th step); 1 when
        ``adaptive=false`` or not training (validation: no gradients)."""
        if not (self.cfg.adaptive and self.training and torch.is_grad_enabled()):
            return torch.ones((), device=loss.device)
        cached = hasattr(self, "adaptive_cache")
        if cached and (step - self.cfg.start) % self.cfg.adaptive_every:
            return self.adaptive_cache.clone()
        assert reference is not None, "a balanced term gets the other terms' sum from the engine"
        if last_layer is None:
            raise PluginError("loss 'adversarial' (adaptive=true) needs the decoder's last weight (out.last_layer) "
                              "and this backbone's decoder has none: set adaptive=false in its args")
        ratio = gradient_norm(reference, last_layer) / (gradient_norm(loss, last_layer) + GRAD_EPS)
        weight = ratio.clamp(0.0, self.cfg.max_adaptive_weight).detach()
        if cached:
            self.adaptive_cache.copy_(weight)
        return weight

    def owned_loss(self, name: str, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        """The discriminator's loss on real (target) vs fake (detached reconstruction) images, in one forward."""
        real, fake = self.logits(torch.cat([target, out.recon])).chunk(2)
        return LossValue(discriminator_loss(self.cfg.loss, real, fake),
                         {"logits_real": real.detach().mean(), "logits_fake": fake.detach().mean()})
