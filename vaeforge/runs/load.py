"""``vaeforge.load(run_dir)``: a trained VAE for use from Python, on image tensors in [0, 1]."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..config.yamlfile import read_yaml
from ..data.sources import refuse_saved_command
from ..data.splits import Sample, chunks, iter_split
from ..errors import CheckpointError, ConfigError, unknown_choice
from ..models.prior import FittedPrior
from ..models.vae import VAE, ImageSpec, build_model
from ..progress import bar
from ..registry import REGISTRY, named_modules_hint
from .layout import CONFIG_FILE, MANIFEST_COPY
from .priors import DEFAULT_SAMPLER, StandardNormal, run_sampler
from . import checkpoints as ckpt

MODES = ("linear", "slerp")
WEIGHTS = ("ema", "model")  # EMA weights (when the checkpoint has them) or the raw trained ones
CHUNK = 64  # images per forward pass: bounds memory on large inputs (the whole val split, long interpolations)
LATEST = (None, "", "latest")  # what asks for the newest checkpoint
ROTATION_TRIES = 5  # reads of the newest checkpoint while a training keeps deleting older ones


def interpolation_weights(steps: int) -> torch.Tensor:
    """``steps + 1`` positions ``t`` from 0 to 1 (exactly 0 and 1 at the ends)."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1)


def interpolate_latents(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """Latents between ``a`` and ``b`` ``[B, D]`` at positions ``t`` ``[T]`` -> ``[B, T, D]``; ``t=0`` gives
    ``a`` and ``t=1`` gives ``b`` exactly. ``slerp`` follows the arc between them, which keeps intermediate
    latents near the radius where a Gaussian prior's mass is instead of cutting through the low-norm middle."""
    if mode not in MODES:
        raise unknown_choice("interpolation mode", mode, MODES)
    a, b, t = a.unsqueeze(1), b.unsqueeze(1), t.to(a).view(1, -1, 1)
    if mode == "linear":
        return (1 - t) * a + t * b
    omega = torch.arccos(torch.cosine_similarity(a, b, dim=-1).unsqueeze(-1).clamp(-1, 1))
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6  # (anti)parallel latents: the great circle is undefined, fall back to a line
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / safe)
    wb = torch.where(parallel, t, torch.sin(t * omega) / safe)
    return wa * a + wb * b


class LoadedVAE:
    """A trained VAE in eval mode; every method takes and returns float images ``[B, 3, H, W]`` in [0, 1]. Latents
    are ``[B, *latent_shape]``: vectors, or tensors ``[B, c, h, w]`` of a spatial backbone; the vector math on them
    (interpolation, mixing, attribute directions) runs on them flattened."""

    def __init__(self, vae: VAE, run_dir: Path, config: Any, manifest: dict[str, Any], checkpoint: Path,
                 weights: str, shards: str | None = None) -> None:
        self.vae = vae.eval()
        self.run_dir, self.config, self.manifest = run_dir, config, manifest
        self.checkpoint, self.weights = checkpoint, weights
        self.shards = shards  # where the dataset is, when not at the run's data.shards
        self._means: dict[tuple[str, int], torch.Tensor] = {}  # posterior means by (split, limit)

    @property
    def latent_dim(self) -> int:
        """Latent dims in all (a tensor latent's c x h x w)."""
        return self.vae.latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One latent's shape: ``(latent_dim,)``, or ``(c, h, w)`` for a spatial backbone."""
        return self.vae.latent_shape

    @property
    def image_size(self) -> int:
        return self.vae.image.size

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def samples(self, split: str, limit: int = 0, column: str | None = None) -> Iterator[Sample]:
        """The first ``limit`` (0: all) samples of a split of the run's dataset (the shards it trained on), in file
        order; with ``column``, only those labelled in it. A ``pipe:`` command in the run's config is not run (a run
        folder is data): ``shards`` given to :func:`load` names the dataset instead."""
        if self.shards is None:
            refuse_saved_command("data.shards", self.config.data.shards, "name the data again (a task's shards=..., "
                                 "vaeforge.load(..., shards=...))")
        return iter_split(self.shards or self.config.data.shards, self.manifest, split, limit, column)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, *latent_shape]``."""
        parts = [self.vae.encode(chunk.to(self.device)) for chunk in x.split(CHUNK)]
        return torch.cat([mu for mu, _ in parts]), torch.cat([logvar for _, logvar in parts])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] for latents ``z`` ``[B, *latent_shape]``."""
        return torch.cat([self.vae.decode(chunk.to(self.device)) for chunk in z.split(CHUNK)])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        """Decode the posterior mean (or, with ``sample=True``, a posterior sample) of each image."""
        mu, logvar = self.encode(x)
        if sample:
            noise = torch.randn(mu.shape, generator=generator).to(mu.device)
            mu = mu + noise * torch.exp(0.5 * logvar)
        return self.decode(mu)

    @torch.no_grad()
    def posterior_means(self, split: str, limit: int = 0) -> torch.Tensor:
        """Posterior means ``[N, *latent_shape]`` of the first ``limit`` images (0: all) of a split of the run's
        dataset, in file order, on the CPU; kept, so that fitting several priors encodes the split once."""
        if (split, limit) not in self._means:
            count = self.manifest.get("splits", {}).get(split, {}).get("count")
            total = min(limit, count) if limit and count else limit or count
            with bar(desc=f"encoding {split} images", total=total, unit="img") as shown:
                mus = []
                for group in chunks(self.samples(split, limit), CHUNK):
                    mus.append(self.encode(torch.stack([s.image for s in group]))[0].cpu())
                    shown.update(len(group))
            self._means[split, limit] = torch.cat(mus) if mus else torch.empty(0, *self.latent_shape)
        return self._means[split, limit].clone()

    def sampler(self, name: str = DEFAULT_SAMPLER, prior_args: dict[str, Any] | None = None, train_limit: int = 0,
                progress: bool = True) -> StandardNormal | FittedPrior:
        """Where samples come from: ``prior`` is N(0, I); any prior plugin (``gmm``, ``flow``, ...) is fitted on
        the training split's posterior means (at most ``train_limit`` images, 0: all) with options
        ``prior_args``, once: it is saved in the run folder and reused while checkpoint, weights and options
        stay the same. ``auto``: ``flow`` for vector latents, the prior over latent tensors fitted before for tensor
        latents (a DataError naming how to fit one until then)."""
        return run_sampler(self, name, prior_args, train_limit, progress)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               sampler: str = DEFAULT_SAMPLER, prior_args: dict[str, Any] | None = None) -> torch.Tensor:
        """``n`` faces decoded from latents of ``sampler`` (see :meth:`sampler`); ``temperature`` scales the
        spread (for ``prior``: z ~ N(0, temperature^2 I))."""
        return self.decode(self.sampler(sampler, prior_args).sample(n, generator, temperature))

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 8, mode: str = "linear") -> torch.Tensor:
        """Decoded path between the posterior means of ``a`` and ``b`` (``[B, 3, H, W]`` each) ->
        ``[B, steps + 1, 3, H, W]``; the first and last images are the reconstructions of ``a`` and ``b``."""
        z = interpolate_latents(self.encode(a)[0].flatten(1), self.encode(b)[0].flatten(1),
                                interpolation_weights(steps), mode)
        return self._decode_grid(z)

    @torch.no_grad()
    def mix(self, x: torch.Tensor, weights: list[float] | torch.Tensor) -> torch.Tensor:
        """One face ``[1, 3, H, W]`` decoded from the weighted mean of the posterior means of ``x`` (one weight
        per image; weights are normalised to sum to 1)."""
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() != x.shape[0] or (w < 0).any() or float(w.sum()) <= 0:
            raise ConfigError(f"mix needs one non-negative weight per image ({x.shape[0]}), "
                              f"not all zero; got {w.tolist()}")
        mu = self.encode(x)[0].flatten(1)
        return self.decode(((w / w.sum()).to(mu) @ mu).reshape(1, *self.latent_shape))

    @torch.no_grad()
    def edit(self, x: torch.Tensor, direction: torch.Tensor, alphas: list[float]) -> torch.Tensor:
        """Images decoded from ``mean + alpha * direction`` for each alpha -> ``[B, len(alphas), 3, H, W]``;
        alpha 0 is the reconstruction. ``direction`` is a latent (any shape with ``latent_dim`` values)."""
        mu = self.encode(x)[0].flatten(1)
        v = direction.to(mu).flatten()
        if v.numel() != self.latent_dim:
            raise ConfigError(f"direction has {v.numel()} dims, the model's latent has {self.latent_dim} "
                              f"(shape {list(self.latent_shape)})")
        a = torch.as_tensor(alphas, dtype=mu.dtype, device=mu.device).view(1, -1, 1)
        return self._decode_grid(mu[:, None] + a * v)

    def _decode_grid(self, z: torch.Tensor) -> torch.Tensor:
        """Flattened latents ``[B, T, latent_dim]`` -> images ``[B, T, 3, H, W]``."""
        return self.decode(z.flatten(0, 1).reshape(-1, *self.latent_shape)).unflatten(0, z.shape[:2])


def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """``None``/``latest``: the newest checkpoint; a step number, a folder name or a path otherwise."""
    if checkpoint in LATEST:
        found = ckpt.latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"run_dir {run_dir} has no checkpoint (train it first, or check the path)")
        return found
    for candidate in (Path(str(checkpoint)), run_dir / ckpt.CHECKPOINTS / str(checkpoint),
                      run_dir / ckpt.CHECKPOINTS / f"{ckpt.PREFIX}{int(checkpoint):08d}"
                      if str(checkpoint).isdigit() else None):
        if candidate is not None and candidate.is_dir():
            return candidate
    have = ", ".join(p.name for p in ckpt.checkpoint_dirs(run_dir)) or "none"
    raise CheckpointError(f"checkpoint '{checkpoint}' not found in {run_dir} (have: {have})")


def read_checkpoint(run_dir: Path, checkpoint: str | None, weights: str) -> tuple[Path, str, dict[str, torch.Tensor]]:
    """The chosen checkpoint folder, which weights it gives (``ema`` falls back to ``model`` when it has none) and
    their tensors. A training that still writes the run deletes its older checkpoints: when the newest was asked
    for and is deleted while it is read, the new newest is read instead."""
    for _ in range(ROTATION_TRIES):
        folder = resolve_checkpoint(run_dir, checkpoint)
        kind = "ema" if weights == "ema" and (folder / "ema.safetensors").exists() else "model"
        try:
            return folder, kind, ckpt.load_weights(folder / f"{kind}.safetensors")
        except CheckpointError:
            if folder.is_dir():  # still there: damaged, not rotated away
                raise
        if checkpoint not in LATEST:
            raise CheckpointError(f"checkpoint {folder} was deleted while it was read (rotated away by a training "
                                  "still writing the run?): pass checkpoint=latest, or one it keeps "
                                  "(trainer.keep_checkpoints)")
    raise CheckpointError(f"the newest checkpoint of {run_dir} was deleted while it was read, {ROTATION_TRIES} "
                          "times: the training writing the run rotates checkpoints faster than they load; try "
                          "again, or give that training a larger trainer.keep_checkpoints")


def build_trained(model_cfg: Any, image: ImageSpec, state: dict[str, torch.Tensor], where: Path) -> VAE:
    """The VAE of a ``model`` config section (its backbone from the registry) holding the weights ``state``
    (read from ``where``), checked to fit."""
    vae = build_model(model_cfg, image)
    ckpt.check_architecture(ckpt.architecture(vae.state_dict()), state, where)
    vae.load_state_dict(state)
    return vae


def load(run_dir: str | Path, checkpoint: str | None = None, weights: str = "ema", device: str = "cpu",
         plugins: list[str] | tuple[str, ...] = (), shards: str | None = None) -> LoadedVAE:
    """Load a run's trained VAE: EMA weights when the checkpoint has them (``weights="model"`` for the raw
    ones), in eval mode, on ``device``; ``shards``: where its dataset is, when not at its ``data.shards``.

    A run folder is data: the plugin modules its config names are never imported from it. Its backbone must be
    installed (an entry point) or be in one of the ``plugins`` modules the caller names."""
    if weights not in WEIGHTS:
        raise unknown_choice("weights", weights, WEIGHTS)
    run_dir = Path(run_dir)
    config_path, manifest_path = run_dir / CONFIG_FILE, run_dir / MANIFEST_COPY
    if not config_path.is_file() or not manifest_path.is_file():
        from .export import is_export  # here: the export module builds on this one

        hint = ": it is an exported model, load it with vaeforge.from_pretrained" if is_export(run_dir) else ""
        raise CheckpointError(f"{run_dir} is not a vaeforge run folder (no {CONFIG_FILE} / {MANIFEST_COPY}){hint}")
    folder, weights, state = read_checkpoint(run_dir, checkpoint, weights)
    cfg = OmegaConf.create(read_yaml(config_path, "run config"))
    manifest = json.loads(manifest_path.read_text())
    REGISTRY.import_modules(list(plugins))
    image = ImageSpec(int(manifest["image_size"]), int(manifest.get("channels", 3)))
    with named_modules_hint(list(cfg.get("plugins", [])), list(plugins)):
        vae = build_trained(cfg.model, image, state, folder)
    return LoadedVAE(vae.to(device), run_dir, cfg, manifest, folder, weights, shards)
