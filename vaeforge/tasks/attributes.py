"""Attribute tools from the dataset's label columns: latent directions for editing, and a linear classifier that
measures whether an edit worked.

A direction is computed from the posterior means of labelled training images: for a binary column the mean of
the positives minus the mean of the negatives (alpha = 1 moves an average negative face to an average positive
one); for a real-valued column (Kumar attribute scores) the least-squares slope of the means on the score
(alpha = 1 is one unit of score). Directions are saved as safetensors (tensor ``direction`` + metadata).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..runs.tensorfile import read_tensors, write_tensors

VECTORS_DIR = "vectors"  # attribute directions inside a run folder
BINARY, REAL = "binary", "real"


@dataclass
class AttributeVector:
    """A latent direction for one label column and where it came from."""

    attribute: str
    kind: str
    direction: torch.Tensor  # [latent_dim], a tensor latent flattened
    count: int  # labelled training images it was computed from
    source: str = ""  # what it was computed with (checkpoint, weights, image count), to tell stale files

    def save(self, path: Path) -> None:
        meta = {"attribute": self.attribute, "kind": self.kind, "count": str(self.count), "source": self.source}
        write_tensors(path, {"direction": self.direction}, meta)

    @classmethod
    def load(cls, path: str | Path) -> AttributeVector:
        """Read a saved direction; a missing or foreign file is a DataError naming it."""
        meta, tensors = read_tensors(path, "vectors file")
        if "direction" not in tensors or tensors["direction"].ndim != 1:
            raise DataError(f"vectors file {path}: no 1-d 'direction' tensor (has {sorted(tensors)})")
        return cls(meta.get("attribute", Path(path).stem), meta.get("kind", ""), tensors["direction"],
                   int(meta.get("count", 0)), meta.get("source", ""))


def has_attribute(values: torch.Tensor, kind: str) -> torch.Tensor:
    """Label values -> bool: 1 in a binary column, a positive score in a real-valued one."""
    return values > 0.5 if kind == BINARY else values > 0


def direction(mu: torch.Tensor, values: torch.Tensor, kind: str, attribute: str) -> torch.Tensor:
    """The latent direction of an attribute from posterior means ``mu`` ``[N, D]`` and label values ``[N]``."""
    if len(values) == 0:
        raise DataError(f"attribute '{attribute}': no labelled training images")
    mu, values = mu.double(), values.double()
    if kind == BINARY:
        positive = has_attribute(values, kind)
        if positive.all() or not positive.any():
            raise DataError(f"attribute '{attribute}': the {len(values)} labelled training images used are all "
                            f"{'positive' if positive.all() else 'negative'}; need both to compute a direction")
        return (mu[positive].mean(0) - mu[~positive].mean(0)).float()
    centred = values - values.mean()
    if len(values) < 2 or float(centred.square().sum()) == 0:
        raise DataError(f"attribute '{attribute}': need at least two different scores, got {len(values)} image(s)")
    return ((mu - mu.mean(0)) * centred[:, None]).sum(0).div(centred.square().sum()).float()


def posterior_means(encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], batches: Iterable
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means (flattened: ``[N, latent_dim]``) and label values of labelled batches (``.images``,
    ``.values``)."""
    mus, values = [], []
    for batch in batches:
        mus.append(encode(batch.images)[0].flatten(1).cpu())
        values.append(batch.values)
    if not mus:
        return torch.empty(0), torch.empty(0)
    return torch.cat(mus), torch.cat(values)


@dataclass
class AttributeClassifier:
    """Logistic regression on standardised features: P(attribute | image features)."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, targets: torch.Tensor, l2: float = 1e-2, steps: int = 200
            ) -> AttributeClassifier:
        """Fit by L-BFGS on the mean log-loss + ``l2`` * |w|^2 (a convex problem: deterministic, no tuning)."""
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        x, y = (features - mean) / std, targets.float()
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(w.detach(), b.detach(), mean, std)

    def prob(self, features: torch.Tensor) -> torch.Tensor:
        """P(attribute) for each row of ``features``."""
        return torch.sigmoid((features - self.mean) / self.std @ self.weight + self.bias)
