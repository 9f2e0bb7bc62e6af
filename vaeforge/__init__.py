"""vaeforge: train variational autoencoders on face images, from a laptop CPU to a SLURM cluster.

``vaeforge.load(run_dir)`` gives a trained model for Python use, ``vaeforge.export`` writes it as a portable folder
that ``vaeforge.from_pretrained(folder_or_repo_id)`` loads without the run; the plugin API is :mod:`vaeforge.api`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from .runs.load import LoadedVAE
    from .runs.pretrained import PretrainedVAE


def load(run_dir: Any, checkpoint: str | None = None, weights: str = "ema", device: str = "cpu",
         plugins: list[str] | tuple[str, ...] = (), shards: str | None = None) -> "LoadedVAE":
    """A trained VAE from a run folder (EMA weights when present, eval mode); ``plugins``: modules to import for a
    backbone that is not installed (never taken from the run folder); ``shards``: where its dataset is, when not
    at its ``data.shards``. See :func:`vaeforge.runs.load.load`."""
    from .runs.load import load as _load

    return _load(run_dir, checkpoint, weights, device, plugins, shards)


def export(run_dir: Any, out: Any, checkpoint: str | None = None, weights: str = "ema", fitted: bool = True,
           plugins: list[str] | tuple[str, ...] = ()) -> "Path":
    """Write a run's trained VAE (EMA weights when present) as a portable folder ``out`` in the Hub's model layout
    (config.json, model.safetensors, README.md model card). See :func:`vaeforge.runs.export.export`."""
    from .runs.export import export as _export

    return _export(run_dir, out, checkpoint, weights, fitted, plugins)


def from_pretrained(name_or_path: Any, device: str = "cpu", plugins: list[str] | tuple[str, ...] = (), *,
                    revision: str | None = None, cache_dir: Any = None, local_files_only: bool = False,
                    token: str | bool | None = None) -> "PretrainedVAE":
    """An exported VAE from a folder or a Hugging Face Hub model repo id, with ``load``'s API; ``plugins`` as for
    ``load``. See :func:`vaeforge.runs.pretrained.from_pretrained`."""
    from .runs.pretrained import from_pretrained as _from_pretrained

    return _from_pretrained(name_or_path, device, plugins, revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)


__all__ = ["__version__", "export", "from_pretrained", "load"]
