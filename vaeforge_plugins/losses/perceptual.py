"""``perceptual``: LPIPS v0.1 (AlexNet, VGG16 or SqueezeNet 1.1) between the reconstruction and the clean target.

Scale: LPIPS is a per-image distance (about 0.1-0.5 for VAE reconstructions). ``reduction=sum`` (default)
multiplies it by the number of values in the image (C x H x W), i.e. LPIPS counted at every pixel as in
latent-diffusion's L1 + LPIPS loss, so it sits on the same scale as ``recon`` with ``reduction=sum`` and the
term's weight is the balance between the two; ``reduction=mean`` leaves the plain distance. Batch mean always.

The LPIPS network is a frozen submodule (its parameters do not require gradients): the engine neither trains,
synchronises nor checkpoints it (its weights file is named in the config). Gradients flow through it to the
reconstruction.

Cost: LPIPS runs a CNN forward on both images and backward on one, which can cost as much as the VAE itself.
``batch_fraction`` < 1 computes the training term on that share of each batch only (its first images: batches
come shuffled), an unbiased estimate of the same batch mean at a fraction of the cost; validation always uses
the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vaeforge.api import LPIPS, LossTerm, LossValue, VAEOutput, above, choice, register_loss

REDUCTIONS = ("sum", "mean")
NETS = ("alex", "vgg", "squeeze")


@dataclass
class PerceptualConfig:
    net: str = choice("alex", NETS)  # the LPIPS trunk
    weights: str = ""  # safetensors file; empty: $VAEFORGE_LPIPS_WEIGHTS/ or ~/.cache/vaeforge/
    reduction: str = choice("sum", REDUCTIONS)  # sum: LPIPS x (C x H x W), on recon's sum scale; mean: the distance
    batch_fraction: float = above(0, 1.0, high=1)  # share of each training batch the term is computed on (cost falls with it)


@register_loss("perceptual", config=PerceptualConfig)
class Perceptual(LossTerm):
    def __init__(self, cfg: PerceptualConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lpips = LPIPS(cfg.net, cfg.weights or None)

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        recon = out.recon
        if self.training and self.cfg.batch_fraction < 1:
            n = max(1, round(target.shape[0] * self.cfg.batch_fraction))
            recon, target = recon[:n], target[:n]
        distance = self.lpips(recon, target)
        scale = target[0].numel() if self.cfg.reduction == "sum" else 1
        return LossValue(distance.mean() * scale, {"lpips": distance.mean()})
