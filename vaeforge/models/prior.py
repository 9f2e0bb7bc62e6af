"""Learned latent priors: densities fitted after training on the posterior means of the training images and sampled
in place of N(0, I).

The KL term pulls each posterior towards N(0, I), but the aggregate posterior (where the encoder really puts the
faces) does not fill that ball: prior samples land in holes between the training latents and decode to faces the
decoder never learned. A prior plugin (a :class:`LatentPrior` registered with ``vaeforge.api.register_prior``)
learns that distribution instead (ex-post density estimation, Ghosh et al. 2020). This module builds one from its
name and options, fits it reproducibly, and saves / loads it as safetensors: tensors only, plus JSON metadata
naming the plugin and its options. Loading constructs the plugin again and loads the tensors into it, so a run
folder stays data, never code (nothing is unpickled).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from ..progress import bar

from ..config.loader import validate_options
from ..errors import ConfigError, DataError
from ..registry import REGISTRY
from ..runs.tensorfile import read_tensors, write_tensors

FIT_SEED = 0  # priors are fitted with a fixed seed, whatever the task's seed: a fitted prior is reused across tasks
META_KEY = "vaeforge_prior"  # the safetensors metadata entry holding the prior's JSON description


class FitProgress:
    """How a prior's ``fit`` shows its progress: a bar over its steps (tqdm on stderr) with the latest reported
    values beside it. Silent with ``enabled=False`` or ``TQDM_DISABLE=1``."""

    def __init__(self, desc: str = "fitting prior", enabled: bool = True) -> None:
        self.desc, self.enabled = desc, enabled
        self._bar: tqdm | None = None

    def steps(self, total: int) -> Iterator[int]:
        """``range(total)``, drawn as a progress bar."""
        with bar(range(total), self.desc, enabled=self.enabled) as self._bar:
            yield from self._bar

    def report(self, **values: float) -> None:
        """Show ``values`` (e.g. the loss) beside the bar."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)


class LatentPrior(nn.Module):
    """Base class of prior plugins: a density over latents, fitted once, then sampled.

    A plugin is constructed as ``Prior(cfg, shape)``: ``cfg`` its validated config dataclass, ``shape`` the latent
    shape it models. A ``vector_only`` prior (the default) sees flattened latents, ``shape == (D,)``; one that sets
    ``vector_only = False`` gets latents at their own shape (e.g. ``(C, h, w)`` for a spatial autoencoder). The
    constructor must create every parameter and buffer at its final shape: a saved prior is loaded by constructing
    it again and loading its ``state_dict()`` (tensors only, stored as float32) into it.
    """

    vector_only: ClassVar[bool] = True

    def __init__(self, cfg: Any, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg, self.shape = cfg, tuple(shape)

    def fit(self, latents: torch.Tensor, generator: torch.Generator, progress: FitProgress) -> None:
        """Learn the distribution of ``latents`` ``[N, *shape]``; draw all randomness from ``generator``."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` latents ``[n, *shape]``; temperature 1 is the fitted distribution, below 1 more typical ones."""
        raise NotImplementedError


class Standardizer(nn.Module):
    """Per-dimension standardisation of vector latents to mean 0 and std 1, saved with the prior. Flows and
    diffusion models train far better on unit-scale data, and a VAE's latent dims differ in scale by orders of
    magnitude (an inactive dim's posterior means are all near 0)."""

    def __init__(self, dim: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        """Take ``x`` ``[N, D]``'s mean and std (at least ``eps``)."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(self.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean

    def log_det(self) -> torch.Tensor:
        """log |det| of the Jacobian of ``forward``: what a density on standardised latents needs added."""
        return -self.std.log().sum()


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per row of ``x`` ``[N, D]``."""
    return -0.5 * (x.square().sum(1) + x.shape[1] * math.log(2 * math.pi))


def minimize(parameters: Iterable[nn.Parameter], batch_loss: Callable[[], torch.Tensor], progress: FitProgress,
             steps: int, lr: float, weight_decay: float = 0.0, report_as: str = "loss") -> None:
    """Train ``parameters`` for ``steps`` AdamW steps on ``batch_loss()`` (called once per step: it draws its own
    minibatch) with a cosine learning-rate decay from ``lr``, showing the loss as ``report_as`` every 50 steps.
    The fit loop of trained priors, so that each states only its loss."""
    opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in progress.steps(steps):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if step % 50 == 0:
            progress.report(**{report_as: loss.item()})


@dataclass
class FittedPrior:
    """A prior plugin instance and what it was fitted on; samples come out at the latent shape."""

    name: str
    options: dict[str, Any]  # the plugin's config, defaults filled in
    latent_shape: tuple[int, ...]
    module: LatentPrior
    source: str = ""  # what it was fitted on (checkpoint, weights, image limit): tells a stale file
    count: int = 0  # latents it was fitted on
    fit_seconds: float = 0.0
    file: Path | None = None  # where it is saved
    reused: bool = False  # loaded from ``file`` rather than fitted now

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` latents ``[n, *latent_shape]``."""
        return self.module.sample(n, generator, temperature).reshape(n, *self.latent_shape)

    def describe(self) -> dict[str, Any]:
        """The prior's entries of a task summary."""
        return {"prior_options": self.options, "prior_file": str(self.file) if self.file else None,
                "reused": self.reused, "train_images": self.count, "fit_seconds": self.fit_seconds}

    def metadata(self) -> dict[str, Any]:
        return {"plugin": self.name, "options": self.options, "latent_shape": list(self.latent_shape),
                "source": self.source, "count": self.count, "fit_seconds": self.fit_seconds}

    def save(self, path: Path) -> None:
        write_tensors(path, self.module.state_dict(), {META_KEY: json.dumps(self.metadata())})
        self.file = path


def _plugin_config(name: str, args: dict[str, Any] | None) -> tuple[Any, Any, dict[str, Any]]:
    """The prior plugin ``name``, its config from ``args`` (checked against its config dataclass) and that config
    as a dict."""
    plugin = REGISTRY.get("prior", name)
    cfg = validate_options(plugin.config, args or {}, f"prior '{name}'")
    return plugin, cfg, asdict(cfg) if cfg is not None else {}


def prior_options(name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """The options of prior plugin ``name`` given ``args``, defaults filled in: what a fitted prior is keyed by."""
    return _plugin_config(name, args)[2]


def build_prior(name: str, args: dict[str, Any] | None, latent_shape: tuple[int, ...]) -> FittedPrior:
    """An unfitted prior plugin ``name`` with options ``args`` (checked against its config) for latents of
    ``latent_shape``; its parameters are initialised from the fixed fitting seed."""
    plugin, cfg, options = _plugin_config(name, args)
    shape = (math.prod(latent_shape),) if plugin.target.vector_only else tuple(latent_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FIT_SEED)
        module = plugin.target(cfg, shape)
    return FittedPrior(name, options, tuple(latent_shape), module)


def fit_prior(name: str, args: dict[str, Any] | None, latents: torch.Tensor, source: str = "",
              progress: bool = True) -> FittedPrior:
    """Prior plugin ``name`` fitted on ``latents`` ``[N, *latent_shape]`` with the fixed fitting seed: same latents
    and options, same prior."""
    if len(latents) < 2:
        raise DataError(f"prior '{name}': need at least 2 latents to fit on, got {len(latents)}")
    prior = build_prior(name, args, tuple(latents.shape[1:]))
    x = latents.detach().float().cpu().reshape(len(latents), *prior.module.shape)
    started = time.monotonic()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callers may be under no_grad (model.sample)
        torch.manual_seed(FIT_SEED)
        prior.module.fit(x, torch.Generator().manual_seed(FIT_SEED), FitProgress(f"fitting prior {name}", progress))
    prior.module.eval()
    prior.source, prior.count = source, len(latents)
    prior.fit_seconds = round(time.monotonic() - started, 1)
    return prior


def prior_metadata(path: str | Path) -> dict[str, Any]:
    """A saved prior's JSON description (plugin, options, latent_shape, source, ...); {} when it has none."""
    return json.loads(read_tensors(path, "prior file")[0].get(META_KEY, "{}"))


def load_prior(path: str | Path) -> FittedPrior:
    """A saved prior; a missing, foreign or tampered file is a DataError naming it."""
    meta, tensors = read_tensors(path, "prior file")
    try:
        info = json.loads(meta[META_KEY])
        prior = build_prior(str(info["plugin"]), dict(info["options"]), tuple(int(d) for d in info["latent_shape"]))
        prior.source, prior.count, prior.fit_seconds = str(info["source"]), int(info["count"]), info["fit_seconds"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"prior file {path}: not a vaeforge prior (bad or missing '{META_KEY}' metadata: "
                        f"{type(exc).__name__} {exc})") from None
    except ConfigError as exc:
        raise DataError(f"prior file {path}: {exc}") from None
    problem = _state_mismatch(prior.module.state_dict(), tensors)
    if problem:
        raise DataError(f"prior file {path}: its tensors do not fit a '{prior.name}' prior with its options "
                        f"({problem})")
    prior.module.load_state_dict(tensors)
    prior.module.eval()
    prior.file = Path(path)
    return prior


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What differs between two state dicts' names and shapes (at most three of each), or "" when nothing does."""
    missing = sorted(expected.keys() - found.keys())[:3]
    unexpected = sorted(found.keys() - expected.keys())[:3]
    shapes = [f"{k} {list(found[k].shape)} != {list(expected[k].shape)}" for k in sorted(expected.keys() & found.keys())
              if found[k].shape != expected[k].shape][:3]
    parts = [f"missing {missing}" * bool(missing), f"unexpected {unexpected}" * bool(unexpected),
             f"shapes {shapes}" * bool(shapes)]
    return "; ".join(p for p in parts if p)
