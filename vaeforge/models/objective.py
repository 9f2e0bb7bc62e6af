"""Loss terms: the interface loss plugins implement, and the weighted sum the engine trains the model on.

A term may own modules that are NOT trained on the model's objective (a GAN discriminator): it lists them in
:meth:`LossTerm.owned_modules` with their own optimizer settings and scores them in :meth:`LossTerm.owned_loss`.
The engine then trains each with its own optimizer, on its own cadence, and keeps the two apart: the model's
step never updates an owned module, and an owned module's objective sees the model's output detached.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..config.loader import validate_options
from ..errors import ConfigError, PluginError
from ..registry import REGISTRY
from .vae import VAEOutput


@dataclass
class LossValue:
    """A term's value (a scalar, already reduced over the batch) and extra numbers to log."""

    value: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnedOptim:
    """How the engine trains a module a loss term owns: AdamW settings and a cadence in optimizer steps."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max grad norm of the module's parameters; 0: no clipping
    every: int = 1  # trained on every ``every``-th optimizer step ...
    start: int = 0  # ... from this optimizer step on (a warm-up of the model alone before it)

    def active(self, step: int) -> bool:
        """Whether the module trains at optimizer step ``step`` (0-based)."""
        return step >= self.start and (step - self.start) % self.every == 0


@dataclass
class OwnedModule:
    """A submodule a loss term trains with its own optimizer (see :meth:`LossTerm.owned_modules`)."""

    module: nn.Module
    optim: OwnedOptim = field(default_factory=OwnedOptim)


class LossTerm(nn.Module):
    """Base class of loss plugins. A term may own parameters: by default they are trained with the model.

    ``forward(out, target, step)`` gets the model output, the clean target images in [0, 1] and the
    optimizer step (for schedules), and returns a :class:`LossValue`. Document the reduction you use.

    A term that sets ``balanced = True`` (class or instance attribute, fixed once built) is called after all
    the others as ``forward(out, target, step, reference=...)``, ``reference`` being the weighted sum of the
    terms that are not balanced (a 0-dim tensor in the model's graph): it may scale itself against them, e.g. by
    the ratio of their gradient norms at ``out.last_layer`` (an adversarial term's adaptive weight).
    """

    balanced: bool = False

    def forward(self, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:  # pragma: no cover
        raise NotImplementedError

    def owned_modules(self) -> dict[str, OwnedModule]:
        """Submodules trained with their own optimizer on :meth:`owned_loss`, by name (default: none)."""
        return {}

    def owned_loss(self, name: str, out: VAEOutput, target: torch.Tensor, step: int) -> LossValue:
        """The objective of owned module ``name``; ``out`` is detached, so no gradient reaches the model."""
        raise NotImplementedError(f"{type(self).__name__} owns '{name}' but does not define owned_loss")


def detached(out: VAEOutput) -> VAEOutput:
    """The same output cut from the model's graph."""
    return replace(out, logits=out.logits.detach(), mu=out.mu.detach(), logvar=out.logvar.detach(),
                   z=out.z.detach())


def checked_value(result: Any, term: str, origin: str) -> LossValue:
    """``result`` if it is a :class:`LossValue` holding a 0-dim tensor; else a one-line error naming the term."""
    if not isinstance(result, LossValue):
        raise PluginError(f"loss term '{term}' ({origin}) returned {type(result).__name__}, not a LossValue: "
                          "return LossValue(value) with value a 0-dim tensor")
    if not isinstance(result.value, torch.Tensor) or result.value.dim() != 0:
        shape = list(result.value.shape) if isinstance(result.value, torch.Tensor) else type(result.value).__name__
        raise PluginError(f"loss term '{term}' ({origin}) returned a value of shape {shape}, not a 0-dim tensor: "
                          "reduce it over the batch (e.g. .mean())")
    return result


class LossSet(nn.Module):
    """The recipe's loss terms with their weights; ``forward`` returns the total and each weighted term.

    A term with weight 0 is switched off: it is not built (so e.g. ``losses.perceptual.weight=0`` needs no LPIPS
    weights) and not logged."""

    def __init__(self, specs) -> None:
        super().__init__()
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.origins: dict[str, str] = {}  # term -> "plugin 'name' from <distribution>", for error messages
        for term, spec in specs.items():
            if float(spec.weight) == 0.0:
                continue
            plugin = REGISTRY.get("loss", spec.name)
            args = validate_options(plugin.config, spec.args, f"loss '{term}' ({spec.name})")
            module = plugin.target(args) if plugin.config is not None else plugin.target()
            if not isinstance(module, LossTerm):
                raise ConfigError(f"loss '{spec.name}' ({plugin.origin}) must build a LossTerm, got "
                                  f"{type(module).__name__}")
            self.terms[term] = module
            self.weights[term] = float(spec.weight)
            self.origins[term] = f"plugin '{spec.name}' from {plugin.origin}"

    def forward(
        self, out: VAEOutput, target: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of all terms and the logs; balanced terms come last and get the others' sum."""
        logs: dict[str, torch.Tensor] = {}
        balanced = self.balanced
        reference = self._weighted_sum([t for t in self.terms if t not in balanced], out, target, step, logs, {})
        if not balanced:
            return reference, logs
        return reference + self._weighted_sum(balanced, out, target, step, logs, {"reference": reference}), logs

    @property
    def balanced(self) -> list[str]:
        """The terms that balance themselves against the others (:attr:`LossTerm.balanced`)."""
        return [term for term, module in self.terms.items() if module.balanced]

    def _weighted_sum(self, terms: list[str], out: VAEOutput, target: torch.Tensor, step: int,
                      logs: dict[str, torch.Tensor], kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of ``terms``' weighted values; each weighted value and extra goes into ``logs``."""
        total = torch.zeros((), device=target.device)
        for term in terms:
            result = checked_value(self.terms[term](out, target, step, **kwargs), term, self.origins[term])
            weighted = self.weights[term] * result.value.float()
            total = total + weighted
            logs[term] = weighted.detach()
            for key, value in result.logs.items():
                logs[f"{term}/{key}"] = torch.as_tensor(value).detach()
        return total

    def balanced_origins(self) -> list[str]:
        """The balanced terms, each with its plugin, for error messages."""
        return [f"'{term}' ({self.origins[term]})" for term in self.balanced]

    def nonfinite_terms(self, logs: dict[str, torch.Tensor]) -> list[str]:
        """The terms whose weighted value in ``logs`` is not finite, each with its plugin."""
        return [f"'{term}' ({self.origins[term]})" for term in self.terms
                if term in logs and not bool(torch.isfinite(logs[term]).all())]
