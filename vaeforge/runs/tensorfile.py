"""Small safetensors files with metadata (attribute vectors, latent samplers): read without unpickling; a file
that is missing or not safetensors is an error naming it."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DataError

# what reading a missing, truncated or foreign safetensors file raises (RuntimeError: torch's open of the data, when
# the file vanishes after its header was read, e.g. a checkpoint rotated away mid-load)
UNREADABLE = (OSError, SafetensorError, ValueError, RuntimeError)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save ``tensors`` as contiguous fp32 CPU tensors, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)


def read_tensors(path: str | Path, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file; ``what`` names the file's role in the error
    (e.g. "vectors file", "sampler file")."""
    try:
        with safe_open(str(path), "pt") as fh:
            return fh.metadata() or {}, {k: fh.get_tensor(k) for k in fh.keys()}
    except UNREADABLE as exc:
        raise DataError(f"{what} {path}: not a readable safetensors file ({exc})") from None
