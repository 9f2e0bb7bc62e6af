"""Samplers of a trained run: N(0, I) (``prior``) or a learned prior plugin, fitted on the posterior means of the
training split and kept in ``run_dir/priors/<name>_<options-hash>.safetensors``, reused while the checkpoint, the
weights, the options and the training-image limit stay the same.

The default sampler ``auto`` is ``flow`` for vector latents. For the latent tensors of a spatial backbone it is
the prior over latent tensors (a prior plugin that is not ``vector_only``) already fitted in the run folder: N(0, I)
is far from where a small-KL autoencoder puts its latents, and fitting such a prior takes minutes, so ``auto``
refuses, naming how to fit one, rather than fit it unasked."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.splits import TRAIN
from ..errors import ConfigError, DataError, unknown_choice
from ..models.prior import FittedPrior, fit_prior, load_prior, prior_metadata, prior_options
from ..registry import REGISTRY

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .load import LoadedVAE

PRIORS_DIR = "priors"
STANDARD_NORMAL = "prior"  # the sampler name of N(0, I)
DEFAULT_SAMPLER = "auto"  # VECTOR_SAMPLER for vector latents, the fitted prior over latent tensors for tensors
VECTOR_SAMPLER = "flow"  # lowest sample distance at temperature 1 in docs/benchmarks.md (learned latent priors)


class StandardNormal:
    """z ~ N(0, temperature^2 I): the sampler every VAE has without fitting anything."""

    name = STANDARD_NORMAL

    def __init__(self, latent_shape: tuple[int, ...]) -> None:
        self.latent_shape = latent_shape

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        return torch.randn(n, *self.latent_shape, generator=generator) * temperature

    def describe(self) -> dict[str, Any]:
        return {}


def sampler_names() -> list[str]:
    """``prior``, ``auto`` and every registered prior plugin."""
    return [STANDARD_NORMAL, DEFAULT_SAMPLER, *REGISTRY.names("prior")]


def tensor_priors() -> list[str]:
    """The registered prior plugins that model latents at their own shape (not ``vector_only``)."""
    return [name for name in REGISTRY.names("prior") if not REGISTRY.get("prior", name).target.vector_only]


def resolve_default(model: LoadedVAE, name: str) -> str:
    """``auto`` is :data:`VECTOR_SAMPLER` for a model with vector latents; every other name stays."""
    return VECTOR_SAMPLER if name == DEFAULT_SAMPLER and len(model.latent_shape) == 1 else name


def fitted_source(model: LoadedVAE, train_limit: int) -> str:
    """What a prior fitted on ``model``'s training images is keyed by: checkpoint, weights, ``train_limit``."""
    return f"{model.checkpoint.name} {model.weights} train_limit={train_limit}"


def fitted_tensor_prior(model: LoadedVAE, args: dict[str, Any] | None, train_limit: int) -> FittedPrior:
    """The newest prior over latent tensors saved in the run folder for the model's checkpoint, weights and
    ``train_limit`` (and options ``args``, when given); none is a DataError naming how to fit one."""
    source, names = fitted_source(model, train_limit), tensor_priors()
    for path in sorted((model.run_dir / PRIORS_DIR).glob("*.safetensors"), key=lambda p: p.stat().st_mtime,
                       reverse=True):
        about = prior_metadata(path)
        if about.get("plugin") in names and about.get("source") == source and (
                not args or about.get("options") == prior_options(about["plugin"], args)):
            prior = load_prior(path)
            prior.reused = True
            return prior
    limit = f" train_limit={train_limit}" if train_limit else ""
    how = (f"fit one with `vaeforge run task=sample run_dir={model.run_dir} sampler={names[0]}{limit}` (minutes on "
           f"a CPU; priors over tensors: {', '.join(names)})" if names else "install a prior plugin that is not "
           "vector_only")
    raise DataError(f"{model.run_dir} has latent tensors {list(model.latent_shape)}: sampler '{DEFAULT_SAMPLER}' "
                    f"samples them from a prior over latent tensors, and none is fitted on {source}: {how}, or "
                    f"name a sampler (sampler={STANDARD_NORMAL} is N(0, I))")


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
    """Sampler ``name`` of a run: N(0, I) for ``prior``; for ``auto`` see the module; else the prior plugin with
    options ``args``, loaded from the run folder when it was fitted with the same checkpoint, weights, options and
    ``train_limit`` (the training images used, 0: all), otherwise fitted on those images' posterior means (showing
    progress) and saved."""
    check_sampler(name)
    name = resolve_default(model, name)
    if name == DEFAULT_SAMPLER:
        return fitted_tensor_prior(model, args, train_limit)
    if name == STANDARD_NORMAL:
        if args:
            raise ConfigError(f"sampler '{STANDARD_NORMAL}' (N(0, I)) takes no prior_args, got: {', '.join(args)}")
        return StandardNormal(model.latent_shape)
    options = prior_options(name, args)
    path = prior_path(model.run_dir, name, options, train_limit)
    source = fitted_source(model, train_limit)
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
