"""``vaeforge.load(run_dir)``: a trained VAE for use from Python, on image tensors in [0, 1]."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from .errors import CheckpointError
from .model import VAE, ImageSpec, build_model
from .registry import REGISTRY
from .rundir import CONFIG_FILE, MANIFEST_COPY
from .train import checkpoint as ckpt



class LoadedVAE:
    """A trained VAE in eval mode; every method takes and returns float images ``[B, 3, H, W]`` in [0, 1]."""

    def __init__(self, vae: VAE, run_dir: Path, config: Any, manifest: dict[str, Any], checkpoint: Path,
                 weights: str) -> None:
        self.vae = vae.eval()
        self.run_dir, self.config, self.manifest = run_dir, config, manifest
        self.checkpoint, self.weights = checkpoint, weights

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    @property
    def image_size(self) -> int:
        return self.vae.image.size

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``, each ``[B, latent_dim]``."""
        return self.vae.encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.device))

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
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` faces decoded from z ~ N(0, temperature^2 I)."""
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature
        return self.decode(z)


def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """``None``/``latest``: the newest checkpoint; a step number, a folder name or a path otherwise."""
    if checkpoint in (None, "", "latest"):
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


def load(run_dir: str | Path, checkpoint: str | None = None, weights: str = "ema", device: str = "cpu"
         ) -> LoadedVAE:
    """Load a run's trained VAE: EMA weights when the checkpoint has them (``weights="model"`` for the raw
    ones), in eval mode, on ``device``."""
    run_dir = Path(run_dir)
    config_path, manifest_path = run_dir / CONFIG_FILE, run_dir / MANIFEST_COPY
    if not config_path.is_file() or not manifest_path.is_file():
        raise CheckpointError(f"{run_dir} is not a vaeforge run folder (no {CONFIG_FILE} / {MANIFEST_COPY})")
    folder = resolve_checkpoint(run_dir, checkpoint)
    cfg = OmegaConf.load(config_path)
    manifest = json.loads(manifest_path.read_text())
    REGISTRY.import_modules(list(cfg.get("plugins", [])))
    vae = build_model(cfg.model, ImageSpec(int(manifest["image_size"]), int(manifest.get("channels", 3))))
    file = folder / "ema.safetensors"
    if weights != "ema" or not file.exists():
        weights, file = "model", folder / "model.safetensors"
    state = ckpt.load_weights(file)
    ckpt.check_architecture(ckpt.architecture(vae.state_dict()), state, folder)
    vae.load_state_dict(state)
    return LoadedVAE(vae.to(device), run_dir, cfg, manifest, folder, weights)
