"""``vaeforge export run_dir=DIR out=DIR``: a run's trained VAE as a folder that works without the run.

The folder is laid out as huggingface_hub's ``ModelHubMixin`` lays out a model repo, so it can be pushed to the Hub
as it is: ``config.json`` (what builds the model and where it came from), ``model.safetensors`` (the weights; the
vaeforge version, the plugins and the image size in its header), ``README.md`` (the model card: data, recipe,
evaluate metrics), and the latent priors and attribute directions the run fitted with the exported weights
(``priors/``, ``vectors/``). ``vaeforge.from_pretrained`` loads it. It is written beside ``out`` and renamed into
place, and only ever replaces an earlier export.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from huggingface_hub import constants as hub
from omegaconf import MISSING, OmegaConf

from .. import __version__
from ..cli.logs import entry_point
from ..cli.options import help_text, read_args
from ..config.fields import choice
from ..config.loader import validate_options
from ..errors import CheckpointError, ConfigError
from ..models.prior import prior_metadata
from ..registry import REGISTRY
from ..tasks.attributes import VECTORS_DIR
from . import checkpoints as ckpt
from .card import model_card
from .layout import RUN_FILE, TASKS_DIR
from .load import WEIGHTS, LoadedVAE, load
from .priors import PRIORS_DIR
from .tensorfile import read_tensors

log = logging.getLogger("vaeforge.runs.export")  # by name: under vaeforge's also when run as __main__ (python -m)

FORMAT, FORMAT_VERSION = "vaeforge-export", 1  # config.json's "format" tells an export from any other folder
CONFIG, WEIGHTS_FILE, CARD = hub.CONFIG_NAME, hub.SAFETENSORS_SINGLE_FILE, hub.REPOCARD_NAME
REQUIRED = ("model", "image", "weights", "source", "plugins", "fitted", "data", "recipe")
SETUP_KEYS = ("world_size", "distributed_type", "mixed_precision", "device", "global_batch")
NOT_METRICS = ("seed", "seconds", "files")  # numbers of an evaluate summary that are bookkeeping
ABOUT = ("Write a run's trained VAE as a portable folder (config.json, model.safetensors, README.md model card) "
         "that vaeforge.from_pretrained loads without the run.")
USAGE = "vaeforge export run_dir=DIR out=DIR [checkpoint=...] [weights=ema|model]"


@dataclass
class ExportOptions:
    """Which run, checkpoint and weights to export, and where."""

    run_dir: str = MISSING  # a training run folder
    out: str = MISSING  # the export folder: created, or replaced when it holds an earlier export
    checkpoint: Optional[str] = None  # a checkpoint of the run; default: the newest complete one
    weights: str = choice("ema", WEIGHTS)  # the EMA of the weights (when the run kept one) or the trained weights
    fitted: bool = True  # include the latent priors and attribute directions the run fitted with these weights
    plugins: List[str] = field(default_factory=list)  # modules to import for their plugins (a run folder names none)


def export(run_dir: str | Path, out: str | Path, checkpoint: str | None = None, weights: str = "ema",
           fitted: bool = True, plugins: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the VAE of a run's checkpoint (EMA weights by default) as the export folder ``out``; returns it."""
    model = load(run_dir, checkpoint, weights, "cpu", plugins)
    info = export_info(model, fitted)
    out = Path(out)
    replace_folder(out, lambda folder: _write(folder, model, info))
    return out


def _write(folder: Path, model: LoadedVAE, info: dict[str, Any]) -> None:
    (folder / CONFIG).write_text(json.dumps(info, indent=1))
    ckpt.save_weights(folder / WEIGHTS_FILE, model.vae.state_dict(), header(info))
    copy_files(model.run_dir, folder, fitted_paths(info))
    model_card(info).save(folder / CARD)


def export_info(model: LoadedVAE, fitted: bool = True) -> dict[str, Any]:
    """``config.json`` of an export: the model (backbone, latent size, image shape), the plugins it was built
    with, where it came from, the dataset (without its file lists), the recipe, the evaluate metrics and the
    fitted priors and directions that go with it."""
    recipe = OmegaConf.to_container(model.config, resolve=True)
    state = ckpt.read_state(model.checkpoint)
    extras = fitted_files(model) if fitted else {PRIORS_DIR: [], VECTORS_DIR: []}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "vaeforge_version": __version__,
        "model": recipe["model"],
        "image": {"size": model.image_size, "channels": model.vae.image.channels},
        "latent_shape": list(model.latent_shape),
        "weights": model.weights,
        "source": {"run": model.run_dir.resolve().name, "checkpoint": model.checkpoint.name, "step": state.step,
                   "images_seen": state.images_seen, "train_seconds": round(state.train_seconds, 1)},
        "plugins": [provenance("backbone", recipe["model"]["backbone"]["name"]),
                    *(provenance("prior", name) for name in sorted({p["plugin"] for p in extras[PRIORS_DIR]}))],
        "fitted": extras,
        "data": dataset_summary(model.manifest),
        "recipe": recipe,
        "setup": _setup(model.run_dir),
        "evaluation": evaluation(model.run_dir),
    }


def provenance(kind: str, name: str) -> dict[str, str]:
    """Where the installed plugin ``name`` of ``kind`` comes from: its distribution and version, and its module."""
    plugin = REGISTRY.get(kind, name)
    return {"kind": kind, "name": name, "distribution": plugin.distribution, "version": plugin.version,
            "module": plugin.target.__module__}


def header(info: dict[str, Any]) -> dict[str, str]:
    """The safetensors header metadata of ``model.safetensors``: what the weights are, readable without
    config.json (``format: pt`` as the Hub's tools expect)."""
    return {"format": "pt", "vaeforge_version": info["vaeforge_version"], "plugins": json.dumps(info["plugins"]),
            "image_size": str(info["image"]["size"]), "channels": str(info["image"]["channels"]),
            "latent_dim": str(info["model"]["latent_dim"]), "weights": info["weights"],
            "source": f"{info['source']['run']}/{info['source']['checkpoint']}"}


def fitted_files(model: LoadedVAE) -> dict[str, list[dict[str, Any]]]:
    """The run's latent priors and attribute directions fitted on the exported checkpoint and weights (with any
    training-image limit), each as its file (relative to the run) and its own metadata."""
    made_with = f"{model.checkpoint.name} {model.weights} "
    found: dict[str, list[dict[str, Any]]] = {PRIORS_DIR: [], VECTORS_DIR: []}
    for kind, entries in found.items():
        for path in sorted((model.run_dir / kind).glob("*.safetensors")):
            about = prior_metadata(path) if kind == PRIORS_DIR else dict(read_tensors(path, f"{kind} file")[0])
            if str(about.get("source", "")).startswith(made_with):
                entries.append({"file": f"{kind}/{path.name}", **about})
    return found


def fitted_paths(info: dict[str, Any]) -> list[str]:
    """The fitted priors and directions of an export, as paths relative to its folder."""
    return [entry["file"] for entries in info["fitted"].values() for entry in entries]


def copy_files(source: Path, folder: Path, paths: list[str]) -> None:
    """Copy files (paths relative to ``source``) into ``folder`` at the same relative paths."""
    for path in paths:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, folder / path)


def dataset_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The dataset's manifest without its lists of identities, shards and skipped files: how it was prepared,
    its image shape and crop, the split sizes and the label columns."""
    splits = {name: {"count": split["count"]} for name, split in manifest.get("splits", {}).items()}
    rest = {k: v for k, v in manifest.items() if k not in ("splits", "skipped")}
    return {**rest, "splits": splits, "skipped": len(manifest.get("skipped", []))}


def _setup(run_dir: Path) -> dict[str, Any]:
    """What the run trained on (from run.json): processes, precision, device, global batch."""
    path = run_dir / RUN_FILE
    setup = json.loads(path.read_text()) if path.is_file() else {}
    return {k: setup[k] for k in SETUP_KEYS if k in setup}


def evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of the run's latest ``task=evaluate`` (``tasks/evaluate/summary.json``) and what they were
    measured on; None when it has not been run."""
    path = run_dir / TASKS_DIR / "evaluate" / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    metrics = {k: v for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}
    return {"checkpoint": Path(str(summary.get("checkpoint", ""))).name, "weights": summary.get("weights"),
            "split": summary.get("split"), "options": summary.get("options", {}), "metrics": metrics}


def read_info(folder: Path) -> dict[str, Any]:
    """``config.json`` of an export folder; a folder that is not one is a CheckpointError saying why."""
    path = folder / CONFIG
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder} is not a vaeforge export (no readable {CONFIG}: {exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a vaeforge export ({CONFIG} has no \"format\": \"{FORMAT}\")")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder} is an export of format version {info.get('format_version')!r}; vaeforge "
                              f"{__version__} reads version {FORMAT_VERSION}")
    missing = [key for key in REQUIRED if key not in info]
    if missing:
        raise CheckpointError(f"{path} is damaged: it lacks {', '.join(missing)}")
    return info


def is_export(folder: Path) -> bool:
    try:
        read_info(folder)
    except CheckpointError:
        return False
    return True


def replace_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """Write an export with ``fill`` into a folder beside ``out``, then rename it into place: ``out`` is either
    as it was or complete. ``out`` may be missing, empty or an earlier export; anything else is refused."""
    if out.exists() and not (out.is_dir() and (is_export(out) or not any(out.iterdir()))):
        raise ConfigError(f"out {out} exists and is not a vaeforge export: refusing to replace it (choose a new "
                          "or empty folder)")
    tmp, old = (out.with_name(f".{out.name}.{tag}-{os.getpid()}") for tag in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        ckpt.fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    ckpt.fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


@entry_point
def main(argv: list[str]) -> None:
    args = read_args(argv, lambda _: help_text(USAGE, ABOUT, [("options (key=value)", ExportOptions, "")]))
    opts = validate_options(ExportOptions, args, "export")
    out = export(opts.run_dir, opts.out, opts.checkpoint, opts.weights, opts.fitted, opts.plugins)
    log.info(f"export: {out} (vaeforge.from_pretrained({str(out)!r}) loads it)")


if __name__ == "__main__":
    main()
