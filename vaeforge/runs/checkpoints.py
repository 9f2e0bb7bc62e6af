"""Atomic, resumable checkpoints: weights in safetensors, the rest in files that load with ``weights_only``.

A checkpoint is a folder ``run_dir/checkpoints/step_NNNNNNNN``. It is written under a ``.tmp`` name by all
ranks (each its own RNG state), fsync'ed, then renamed by rank 0: a folder without ``.tmp`` is always complete.

Under DeepSpeed the optimizer is sharded: each rank's shard is written by DeepSpeed's own engine API into
``deepspeed/`` (with ``deepspeed.json``: ZeRO stage and SHA-256 of every file), and the weights are
ALSO saved consolidated (fp32) as ``model.safetensors``, so ``vaeforge.load`` works the same. DeepSpeed's
loader unpickles its own shard files (``torch.load(weights_only=False)``): the hashes are checked first, but a
checkpoint folder must come from a source you trust. Everything vaeforge reads itself loads pickle-free.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import CheckpointError, write_failure
from .tensorfile import UNREADABLE

CHECKPOINTS = "checkpoints"
PREFIX = "step_"
TMP = ".tmp"
DEEPSPEED = "deepspeed"  # DeepSpeed's sharded model/optimizer states (tag and sub-folder)
DEEPSPEED_INFO = "deepspeed.json"
TORCH_SAVE_WRITE_ERRORS = ("basic_ios::clear", "failed writing file", "unexpected pos")  # torch.save's failed writes
FULL_DISK_BYTES = 16 << 20
STEP_DIR = re.compile(rf"^{PREFIX}(\d{{8}})$")


@dataclass
class TrainerState:
    """Where training stands: optimizer steps, data position and counters."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained on
    images_seen: int = 0
    nonfinite_skipped: int = 0
    train_seconds: float = 0.0  # wall-clock seconds of training loops so far, across resumes
    world_size: int = 1
    architecture: dict[str, list[int]] = field(default_factory=dict)
    owned_nonfinite_skipped: dict[str, int] = field(default_factory=dict)  # per owned optimizer group

    def advance(self, images: int, batches_per_epoch: int) -> None:
        """One micro-batch of ``images`` (all ranks) trained on; an epoch's last one starts the next epoch."""
        self.images_seen += images
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict (parameters and buffers): equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def scan(run_dir: Path) -> tuple[list[Path], list[str]]:
    """The complete checkpoints of a run, oldest first, and why each other entry of ``checkpoints/`` is ignored.

    A checkpoint counts when its folder is named ``step_<8 digits>``, holds ``model.safetensors`` and a readable
    ``state.json`` whose step is the folder's: a folder copied to another name or a stale ``state.json`` is not
    taken for the newest (and is never rotated away). ``.tmp`` folders are half-written ones (see
    :func:`remove_partial`)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return [], []
    done, ignored = [], []
    for path in sorted(root.iterdir()):
        if path.name.endswith(TMP):
            continue
        reason = _not_a_checkpoint(path)
        if reason:
            ignored.append(f"{path.name} ({reason})")
        else:
            done.append(path)
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):])), ignored


def _not_a_checkpoint(path: Path) -> str:
    """Why ``path`` is not a complete checkpoint ("" when it is one)."""
    match = STEP_DIR.match(path.name)
    if not path.is_dir() or match is None:
        return f"not a folder named {PREFIX}<8 digits>"
    if not (path / "model.safetensors").is_file():
        return "no model.safetensors"
    try:
        step = json.loads((path / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable state.json"
    if step != int(match.group(1)):
        return f"its state.json says step {step}"
    return ""


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (see :func:`scan`)."""
    return scan(run_dir)[0]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def architecture(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Parameter names and shapes: what a checkpoint must match to be loaded into a model."""
    return {k: list(v.shape) for k, v in state_dict.items()}


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` and fsync it. Files are serialised in memory and written here, so a failed write is an
    ``OSError`` naming the file and its cause (torch.save only says "iostream error" when the disk is full)."""
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        exc.filename = str(path)
        raise


def _torch_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file below ``folder`` and the folder itself: before it is renamed into place."""
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
    fsync_dir(folder)


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors as a safetensors file (contiguous CPU copies, written by :func:`_write_file`), with string
    ``metadata`` in its header."""
    _write_file(path, save(_tensors(tensors), metadata=metadata))


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """The RNG states of this process, as plain data and tensors (loadable with ``weights_only``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tmp_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"{PREFIX}{step:08d}{TMP}"


def write_rank_state(folder: Path, rank: int) -> None:
    """Each rank's own part of a checkpoint: its RNG state."""
    _write_file(folder / f"rng_rank{rank}.pt", _torch_bytes(rng_state()))


def write_main_state(
    folder: Path,
    weights: dict[str, dict[str, torch.Tensor]],
    states: dict[str, Any],
    state: TrainerState,
) -> None:
    """Rank 0's part: weights (``model``, ``ema``, ``losses``) as safetensors, plain-data ``states``
    (``optimizer``, ``scheduler``, ``scaler``: tensors and builtins only) as ``<name>.pt``, and ``state.json``."""
    for name, tensors in weights.items():
        if tensors:
            save_weights(folder / f"{name}.safetensors", tensors)
    for name, value in states.items():
        _write_file(folder / f"{name}.pt", _torch_bytes(value))
    _write_file(folder / "state.json", json.dumps(asdict(state), indent=1).encode())


def publish(folder: Path, keep: int) -> Path:
    """Rename a fully written ``.tmp`` folder into place, then drop all but the newest ``keep`` checkpoints."""
    final = folder.with_name(folder.name[: -len(TMP)])
    if final.exists():
        discard(final)
    folder.rename(final)
    fsync_dir(final.parent)
    for old in checkpoint_dirs(final.parent.parent)[:-keep] if keep > 0 else []:
        discard(old)
    return final


def discard(folder: Path) -> None:
    """Delete a checkpoint folder, renamed away first: a reader (a task loading the run while it trains) finds it
    whole or not at all, never half-deleted. A rename left by a crash is deleted by :func:`remove_partial`."""
    doomed = folder.with_name(f"{folder.name}.old{TMP}")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def write_failed(exc: OSError, folder: Path, remove: bool = True) -> CheckpointError:
    """The one line for a checkpoint whose ``.tmp`` ``folder`` could not be written; the checkpoints before it are
    untouched. With ``remove`` (one process: no other rank may still be writing into it) the folder is deleted
    here, giving back its space; else the next start deletes it."""
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
    latest = latest_checkpoint(folder.parent.parent)
    kept = f"the previous checkpoint {latest} is intact" if latest else "no checkpoint was written before it"
    problem, fix = write_failure(exc)
    return CheckpointError(f"{problem} while writing {exc.filename or folder} (checkpoint {folder.name[:-len(TMP)]}): "
                           f"{kept}; {fix}, then continue with resume=true")


def remove_partial(run_dir: Path) -> None:
    """Delete checkpoint folders left half-written by a killed run."""
    for p in (run_dir / CHECKPOINTS).glob(f"{PREFIX}*{TMP}"):
        shutil.rmtree(p, ignore_errors=True)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a damaged file, or one holding NaN or inf (training skips every update
    that is not finite, so such weights were not written by it), is a clear error naming it."""
    try:
        weights = load_file(str(path))
    except UNREADABLE as exc:
        raise CheckpointError(f"checkpoint file {path} is damaged or unreadable ({exc})") from None
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint file {path} holds non-finite weights (NaN or inf in '{bad}'): it is "
                              "damaged; use an earlier checkpoint (checkpoint=STEP, or delete this one's folder to "
                              "resume from the one before)")
    return weights


def load_pickle_free(path: Path) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True``: tensors and plain data only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {path} is damaged or not a plain-data file ({exc})") from None


def read_state(folder: Path) -> TrainerState:
    try:
        return TrainerState(**json.loads((folder / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: state.json is damaged ({exc})") from None


def check_architecture(expected: dict[str, list[int]], found: dict[str, torch.Tensor], where: Path) -> None:
    """Fail with the first differences when a checkpoint was made by another architecture."""
    got = architecture(found)
    if got == expected:
        return
    missing = sorted(set(expected) - set(got))[:3]
    extra = sorted(set(got) - set(expected))[:3]
    shapes = [f"{k}: {got[k]} vs {expected[k]}" for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
    parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "",
             f"shape {shapes[:3]}" if shapes else ""]
    raise CheckpointError(
        f"checkpoint {where} was made for another architecture ({'; '.join(p for p in parts if p)})"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_deepspeed(engine: Any, folder: Path) -> None:
    """Every rank writes its DeepSpeed shards into ``folder/deepspeed`` (collective). DeepSpeed writes them with
    ``torch.save``, which reports a failed write as a RuntimeError without its cause: it is raised as the OSError
    it is (a full disk when the disk has under ``FULL_DISK_BYTES`` left), so the one-line checkpoint error
    names it."""
    try:
        engine.save_checkpoint(str(folder), tag=DEEPSPEED, save_latest=False)
    except RuntimeError as exc:
        if not any(sign in str(exc) for sign in TORCH_SAVE_WRITE_ERRORS):
            raise
        full = shutil.disk_usage(folder).free < FULL_DISK_BYTES
        raise OSError(errno.ENOSPC if full else errno.EIO, str(exc).splitlines()[0], str(folder / DEEPSPEED)) from exc


def describe_deepspeed(folder: Path, stage: int) -> None:
    """Rank 0, once all shards are written: fsync them and record the ZeRO stage and their hashes."""
    files = {}
    for path in sorted((folder / DEEPSPEED).rglob("*")):
        if path.is_file():
            _fsync(path)
            files[str(path.relative_to(folder))] = _sha256(path)
    info = {"zero_stage": stage, "sha256": files}
    _write_file(folder / DEEPSPEED_INFO, json.dumps(info, indent=1).encode())


def _deepspeed_info(folder: Path) -> dict[str, Any] | None:
    """``deepspeed.json`` of a checkpoint (None when it was written without DeepSpeed)."""
    path = folder / DEEPSPEED_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        return {"zero_stage": int(info["zero_stage"]), "sha256": dict(info["sha256"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is damaged ({exc})") from None


def check_layout(folder: Path, stage: int | None) -> None:
    """Fail clearly when a checkpoint was written by another setup (DDP vs DeepSpeed, or another ZeRO stage)."""
    info = _deepspeed_info(folder)
    written = None if info is None else info["zero_stage"]
    if written != stage:
        was = "without DeepSpeed" if written is None else f"by DeepSpeed ZeRO-{written}"
        now = "no DeepSpeed" if stage is None else f"ZeRO-{stage}"
        raise CheckpointError(f"checkpoint {folder} was written {was}, this run uses {now}: resume it with the "
                              "launch that wrote it")


def damaged_deepspeed_file(folder: Path) -> str | None:
    """A message naming the first DeepSpeed shard whose content differs from its recorded hash, else None."""
    info = _deepspeed_info(folder)
    for name, digest in (info["sha256"] if info else {}).items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            return f"checkpoint file {path} is damaged or missing (SHA-256 differs from {DEEPSPEED_INFO})"
    return None


def load_deepspeed(engine: Any, folder: Path) -> None:
    """Let DeepSpeed restore model and optimizer partitions (its loader unpickles its own files: check the
    hashes first, with :func:`damaged_deepspeed_file`)."""
    loaded, _ = engine.load_checkpoint(str(folder), tag=DEEPSPEED, load_optimizer_states=True,
                                       load_lr_scheduler_states=False)
    if loaded is None:
        raise CheckpointError(f"checkpoint {folder}: DeepSpeed could not load {folder / DEEPSPEED}")
