"""Loss terms: the interface loss plugins implement, and the weighted sum the engine trains on."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config.loader import validate_plugin_args
from .vae import VAEOutput
from ..registry import REGISTRY


@dataclass
class LossValue:
    """A term's value (a scalar, already reduced over the batch) and extra numbers to log."""

    value: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


class LossTerm(nn.Module):
    """Base class of loss plugins. A term may own parameters (they are trained with the model).

    ``forward(out, target, step)`` gets the model output, the clean target images in [0, 1] and the
    optimizer step (for schedules), and returns a :class:`LossValue`. Document the reduction you use.
    """

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:  # pragma: no cover
        raise NotImplementedError


class LossSet(nn.Module):
    """The recipe's loss terms with their weights; ``forward`` returns the total and each weighted term.

    A term with weight 0 is switched off: it is not built (so e.g. ``losses.perceptual.weight=0`` needs no LPIPS
    weights) and not logged."""

    def __init__(self, specs) -> None:
        super().__init__()
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for term, spec in specs.items():
            if float(spec.weight) == 0.0:
                continue
            plugin = REGISTRY.get("loss", spec.name)
            args = validate_plugin_args(plugin.config, spec.args, f"loss '{term}' ({spec.name})")
            module = plugin.target(args) if plugin.config is not None else plugin.target()
            if not isinstance(module, LossTerm):
                raise TypeError(f"loss '{spec.name}' ({plugin.origin}) must build a LossTerm")
            self.terms[term] = module
            self.weights[term] = float(spec.weight)

    def forward(
        self, out: VAEOutput, target: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros((), device=target.device)
        logs: dict[str, torch.Tensor] = {}
        for term, module in self.terms.items():
            result = module(out, target, step)
            weighted = self.weights[term] * result.value.float()
            total = total + weighted
            logs[term] = weighted.detach()
            for key, value in result.logs.items():
                logs[f"{term}/{key}"] = torch.as_tensor(value).detach()
        return total, logs
