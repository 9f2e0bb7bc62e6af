"""Samplers of a trained run: N(0, I) (``prior``) or a learned prior plugin, fitted on the posterior means of the
training split and kept in ``run_dir/priors/<name>_<options-hash>.safetensors``, reused while the checkpoint, the
weights, the options and the training-image limit stay the same."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.splits import TRAIN
from ..errors import ConfigError, unknown_choice
from ..models.prior import FittedPrior, fit_prior, load_prior, prior_options
from ..registry import REGISTRY

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .load import LoadedVAE

PRIORS_DIR = "priors"
STANDARD_NORMAL = "prior"  # the sampler name of N(0, I)
DEFAULT_SAMPLER = "flow"  # lowest sample distance at temperature 1 in docs/benchmarks.md (learned latent priors)


class StandardNormal:
    """z ~ N(0, temperature^2 I): the sampler every VAE has without fitting anything."""

    def __init__(self, latent_shape: tuple[int, ...]) -> None:
        self.latent_shape = latent_shape

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        return torch.randn(n, *self.latent_shape, generator=generator) * temperature

    def describe(self) -> dict[str, Any]:
        return {}


def sampler_names() -> list[str]:
    """``prior`` and every registered prior plugin."""
    return [STANDARD_NORMAL, *REGISTRY.names("prior")]


def check_sampler(name: str) -> None:
    """A ConfigError naming the valid samplers for an unknown one."""
    names = sampler_names()
    if name not in names:
        raise unknown_choice("sampler", name, names)


def prior_path(run_dir: Path, name: str, options: dict[str, Any], train_limit: int) -> Path:
    """``run_dir/priors/<name>_<hash of the options and train_limit>.safetensors``."""
    key = json.dumps({"options": options, "train_limit": train_limit}, sort_keys=True)
    return run_dir / PRIORS_DIR / f"{name}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.safetensors"


def run_sampler(model: LoadedVAE, name: str, args: dict[str, Any] | None = None, train_limit: int = 0,
                progress: bool = True) -> StandardNormal | FittedPrior:
    """Sampler ``name`` of a run: N(0, I) for ``prior``; else the prior plugin with options ``args``, loaded from
    the run folder when it was fitted with the same checkpoint, weights, options and ``train_limit`` (the training
    images used, 0: all), otherwise fitted on those images' posterior means (showing progress) and saved."""
    check_sampler(name)
    if name == STANDARD_NORMAL:
        if args:
            raise ConfigError(f"sampler '{STANDARD_NORMAL}' (N(0, I)) takes no prior_args, got: {', '.join(args)}")
        return StandardNormal((model.latent_dim,))
    options = prior_options(name, args)
    path = prior_path(model.run_dir, name, options, train_limit)
    source = f"{model.checkpoint.name} {model.weights} train_limit={train_limit}"
    if path.is_file():
        saved = load_prior(path)
        if saved.source == source and saved.options == options:
            saved.reused = True
            return saved
    latents = model.posterior_means(TRAIN, train_limit)
    log.info(f"prior {name}: fitting on the posterior means of {len(latents)} training images")
    prior = fit_prior(name, args, latents, source, progress)
    prior.save(path)
    log.info(f"prior {name}: fitted on {prior.count} latents in {prior.fit_seconds} s, saved to {path}")
    return prior
