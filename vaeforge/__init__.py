"""vaeforge: train variational autoencoders on face images, from a laptop CPU to a SLURM cluster.

``vaeforge.load(run_dir)`` gives a trained model for Python use; the plugin API is :mod:`vaeforge.api`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .runs.load import LoadedVAE


def load(run_dir: Any, checkpoint: str | None = None, weights: str = "ema", device: str = "cpu",
         plugins: list[str] | tuple[str, ...] = (), shards: str | None = None) -> "LoadedVAE":
    """A trained VAE from a run folder (EMA weights when present, eval mode); ``plugins``: modules to import for a
    backbone that is not installed (never taken from the run folder); ``shards``: where its dataset is, when not
    at its ``data.shards``. See :func:`vaeforge.runs.load.load`."""
    from .runs.load import load as _load

    return _load(run_dir, checkpoint, weights, device, plugins, shards)


__all__ = ["__version__", "load"]
