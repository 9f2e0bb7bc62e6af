"""Builders: a run's trainable parts from its validated config, before Accelerate wraps them.

The model and the loss parameters trained with it form one :class:`TrainModule` (so DDP and DeepSpeed see one
module); modules a loss term owns (:meth:`LossTerm.owned_modules`) are taken out of that tree and trained as
their own groups, each with its own optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PluginError
from ..models.objective import LossSet, LossTerm, OwnedModule, OwnedOptim
from ..models.vae import VAE, ImageSpec, VAEOutput, build_model


class TrainModule(nn.Module):
    """Model and the loss parameters trained with it, in one module, so DDP synchronises the gradients of both."""

    def __init__(self, vae: VAE, losses: LossSet) -> None:
        super().__init__()
        self.vae = vae
        self.losses = losses

    def forward(self, x: torch.Tensor, target: torch.Tensor, step: int
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], VAEOutput]:
        """Encode ``x`` (possibly corrupted), score the output against the clean ``target``."""
        out = self.vae(x)
        total, logs = self.losses(out, target, step)
        return total, logs, out


@dataclass
class Owned:
    """A module a loss term trains itself: group ``<term>.<key>``."""

    term: str
    key: str
    loss: LossTerm
    module: nn.Module
    optim: OwnedOptim

    @property
    def name(self) -> str:
        return f"{self.term}.{self.key}"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[B, C, H, W]`` -> float in [0, 1]."""
    return images.float().div_(255.0)


def adamw(params: list[nn.Parameter], lr: float, betas: Any, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused: one kernel for all tensors (PyTorch's CPU default is a loop over them)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)


def build_train_module(cfg: Any, image: ImageSpec) -> tuple[TrainModule, list[Owned]]:
    """The VAE and loss terms of ``cfg``; the owned modules are returned apart, out of the module's tree."""
    vae = build_model(cfg.model, image)
    losses = LossSet(cfg.losses)
    return TrainModule(vae, losses), take_owned(losses)


def take_owned(losses: LossSet) -> list[Owned]:
    """Each term's owned modules, unregistered from the term's module tree (the term still reaches them by the
    same attribute): the engine, not the plugin, decides what is trained, saved and synchronised."""
    found = []
    for term, loss in losses.terms.items():
        owned = loss.owned_modules()
        for key, spec in owned.items():
            where = f"loss term '{term}' ({losses.origins[term]}): owned module '{key}'"
            if not isinstance(spec, OwnedModule) or not isinstance(spec.module, nn.Module):
                raise PluginError(f"{where} must be OwnedModule(module, OwnedOptim(...)), got {type(spec).__name__}")
            if spec.optim.every < 1 or spec.optim.start < 0 or spec.optim.lr <= 0:
                raise PluginError(f"{where}: OwnedOptim needs every >= 1, start >= 0 and lr > 0, got {spec.optim}")
            _unregister(loss, spec.module)
            found.append(Owned(term, key, loss, spec.module, spec.optim))
    return found


def _unregister(root: nn.Module, child: nn.Module) -> None:
    """Remove ``child`` from ``root``'s registered submodules, keeping it as a plain attribute."""
    for name, module in list(root.named_modules()):
        for attr, sub in list(module._modules.items()):
            if sub is child:
                del module._modules[attr]
                object.__setattr__(module, attr, child)
                return
