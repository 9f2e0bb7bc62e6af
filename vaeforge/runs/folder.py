"""Operations on a run folder that training and submission share: ownership by one training at a time, the
refusal to start over a run that has checkpoints, and the files that record what a run is."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig

from ..config import save_config
from ..errors import VaeforgeError
from . import checkpoints as ckpt
from .layout import CONFIG_FILE, LOCK_FILE, MANIFEST_COPY, RUN_FILE


def refuse_overwrite(run_dir: Path, resume: bool) -> None:
    """A run folder with checkpoints is continued with ``resume=true``, never silently trained over."""
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise VaeforgeError(f"run_dir {run_dir} already has checkpoints (latest {latest.name}): pass resume=true "
                            "to continue it, or choose another run_dir")


def lock(run_dir: Path) -> tuple[IO[str] | None, str]:
    """Take the folder's training lock (an flock held while the returned file stays open); on failure returns
    ``(None, message)`` naming the process that holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return None, f"run_dir {run_dir} is in use by another training (pid {holder})"
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle, ""


def write_records(run_dir: Path, cfg: DictConfig, setup: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The resolved config, the setup the run has (``run.json``) and a copy of the dataset's manifest."""
    save_config(cfg, run_dir / CONFIG_FILE)
    (run_dir / RUN_FILE).write_text(json.dumps(setup, indent=1))
    (run_dir / MANIFEST_COPY).write_text(json.dumps(manifest, indent=1))


def latest_state(run_dir: Path) -> dict[str, Any]:
    """``state.json`` of the newest checkpoint as plain data ({} when there is none)."""
    latest = ckpt.latest_checkpoint(run_dir)
    return {} if latest is None else vars(ckpt.read_state(latest))
