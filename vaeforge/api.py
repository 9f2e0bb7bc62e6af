"""The public plugin API. Built-in and third-party plugins import only from here.

A plugin module registers itself with the decorators below, and is made known to vaeforge by an entry point in
the ``vaeforge.plugins`` group (or listed in a recipe's ``plugins``)::

    @register_backbone("tiny", config=TinyConfig)
    def build(cfg: TinyConfig, image: ImageSpec, latent_dim: int) -> BackboneParts: ...

    @register_loss("l2", config=L2Config)
    class L2(LossTerm): ...          # constructed as L2(cfg)

    @register_task("sample", config=SampleConfig)
    def sample(ctx: TaskContext, cfg: SampleConfig) -> dict: ...   # returns the JSON summary

    @register_prior("flow", config=FlowConfig)
    class Flow(LatentPrior): ...     # constructed as Flow(cfg, shape); fit(latents, generator, progress), sample(...)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .tasks.attributes import AttributeClassifier, AttributeVector, has_attribute
from .data.corrupt import corrupt
from .data.corrupt import describe as describe_corruption
from .data.corrupt import parse_spec as parse_corruption
from .config.fields import above, at_least, between, choice
from .errors import CheckpointError, ConfigError, DataError, PluginError, did_you_mean, unknown_choice
from .models.objective import LossTerm, LossValue, OwnedModule, OwnedOptim
from .metrics import active_units, checkerboard_power, frechet_distance, kl_per_dim, psnr, ssim
from .models.upsample import HEADS, upsampling_head
from .models.vae import BackboneParts, ImageSpec, VAEOutput
from .models.lpips import LPIPS, find_lpips_weights
from .models.prior import FitProgress, FittedPrior, LatentPrior, Standardizer, minimize, standard_normal_log_prob
from .runs.tensorfile import read_tensors
from .runs.priors import DEFAULT_SAMPLER, STANDARD_NORMAL, check_sampler, sampler_names
from .progress import bar as progress_bar
from .registry import REGISTRY
from .tasks.context import TRAIN, VAL, TaskContext


def register_backbone(name: str, config: type | None = None, replace: bool = False) -> Callable[[Any], Any]:
    """Register a backbone builder ``(cfg, image: ImageSpec, latent_dim: int) -> BackboneParts``."""
    return REGISTRY.register("backbone", name, config, replace)


def register_loss(name: str, config: type | None = None, replace: bool = False) -> Callable[[Any], Any]:
    """Register a :class:`LossTerm` subclass, constructed with its validated config."""
    return REGISTRY.register("loss", name, config, replace)


def register_task(name: str, config: type | None = None, replace: bool = False) -> Callable[[Any], Any]:
    """Register a task ``(ctx: TaskContext, cfg) -> dict`` run by ``python -m vaeforge.run task=NAME``."""
    return REGISTRY.register("task", name, config, replace)


def register_prior(name: str, config: type | None = None, replace: bool = False) -> Callable[[Any], Any]:
    """Register a :class:`LatentPrior` subclass, constructed as ``Prior(cfg, shape)``, usable as
    ``sample sampler=NAME`` and scored by ``evaluate samplers=[..., NAME]``."""
    return REGISTRY.register("prior", name, config, replace)


__all__ = [
    "AttributeClassifier", "AttributeVector", "CheckpointError", "TRAIN", "VAL", "active_units", "corrupt",
    "describe_corruption", "did_you_mean", "frechet_distance", "has_attribute", "parse_corruption", "ssim",
    "BackboneParts", "ConfigError", "DataError", "ImageSpec", "LPIPS", "LossTerm", "LossValue", "OwnedModule",
    "OwnedOptim", "PluginError", "TaskContext", "above", "at_least", "between", "choice", "unknown_choice",
    "VAEOutput", "find_lpips_weights", "kl_per_dim", "psnr", "register_backbone", "register_loss", "register_task",
    "DEFAULT_SAMPLER", "STANDARD_NORMAL", "FitProgress", "FittedPrior", "LatentPrior", "Standardizer",
    "check_sampler", "minimize", "progress_bar", "register_prior", "sampler_names", "standard_normal_log_prob",
    "HEADS", "upsampling_head", "checkerboard_power", "read_tensors",
]
