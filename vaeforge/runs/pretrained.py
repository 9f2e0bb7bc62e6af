"""``vaeforge.from_pretrained(folder_or_repo_id)``: an exported VAE (``vaeforge export``) from a folder or a Hugging
Face Hub model repo, with the API of ``vaeforge.load``; ``save_pretrained`` and ``push_to_hub`` pass it on.

An export folder is data, as a run folder is: the plugin modules its config.json names are never imported. Its
backbone must be installed (an entry point) or be in one of the ``plugins`` modules the caller names; an installed
plugin from another distribution or version than the one recorded is warned about (the weights still have to fit
the architecture it builds).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from omegaconf import OmegaConf

from .. import __version__
from ..data.splits import Sample
from ..errors import CheckpointError, ConfigError, DataError, unknown_choice
from ..models.prior import FittedPrior, prior_options
from ..models.vae import VAE, ImageSpec
from ..registry import REGISTRY
from ..tasks.attributes import VECTORS_DIR
from . import checkpoints as ckpt
from .export import CARD, CONFIG, WEIGHTS_FILE, copy_files, fitted_paths, read_info, replace_folder
from .load import LoadedVAE, build_trained
from .priors import (DEFAULT_SAMPLER, PRIORS_DIR, STANDARD_NORMAL, StandardNormal, check_sampler, prior_path,
                     resolve_default)

EXPORT_FILES = [CONFIG, WEIGHTS_FILE, CARD, f"{PRIORS_DIR}/*", f"{VECTORS_DIR}/*"]  # what a Hub repo gives or gets


class PretrainedVAE(LoadedVAE):
    """An exported VAE in eval mode: the methods of ``vaeforge.load``'s model, usable as a task's model, without the
    run's dataset (``input=val``, fitting a prior or an attribute direction say so). ``run_dir`` is the export
    folder; ``info`` its config.json."""

    def __init__(self, vae: VAE, folder: Path, info: dict[str, Any]) -> None:
        super().__init__(vae, folder, OmegaConf.create(info["recipe"]), info["data"],
                         Path(info["source"]["checkpoint"]), info["weights"])
        self.info = info

    def samples(self, split: str, limit: int = 0, column: str | None = None) -> Iterator[Sample]:
        held = ", ".join(fitted_paths(self.info)) or "no fitted prior or direction"
        raise DataError(f"{self.run_dir} is an exported model: it has no dataset to read the {split} split from "
                        f"(input=val, fitting a prior or an attribute direction need one; it holds {held}): use "
                        "the run (vaeforge.load)")

    def sampler(self, name: str = DEFAULT_SAMPLER, prior_args: dict[str, Any] | None = None, train_limit: int = 0,
                progress: bool = True) -> StandardNormal | FittedPrior:
        """As :meth:`LoadedVAE.sampler`, from the priors exported with the model: an export cannot fit one."""
        check_sampler(name)
        name = resolve_default(self, name)
        options = {} if name in (STANDARD_NORMAL, DEFAULT_SAMPLER) else prior_options(name, prior_args)
        if options and not prior_path(self.run_dir, name, options, train_limit).is_file():
            exported = "; ".join(f"{p['plugin']} {p['options']} ({p['source'].rpartition(' ')[2]})"
                                 for p in self.info["fitted"]["priors"]) or "none"
            raise DataError(f"prior '{name}' with options {options} and train_limit={train_limit} was not exported "
                            f"with this model (exported: {exported}); sampler='{STANDARD_NORMAL}' is N(0, I)")
        return super().sampler(name, prior_args, train_limit, progress)

    def save_pretrained(self, out: str | Path) -> Path:
        """Copy this export into the folder ``out`` (created, or replaced when it holds an export)."""
        out = Path(out)
        files = [CONFIG, WEIGHTS_FILE, CARD, *fitted_paths(self.info)]
        replace_folder(out, lambda folder: copy_files(self.run_dir, folder, files))
        return out

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload vaeforge model",
                    local_hub: str | Path | None = None) -> str:
        """Upload this export to the Hub model repo ``repo_id`` (created when missing) in one commit, through
        ``HfApi.upload_folder``; returns the commit's URL. With ``local_hub=<folder>`` the same files go to
        ``<folder>/<repo_id>`` instead (a mirror, or offline), which ``from_pretrained`` loads as a folder."""
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise ConfigError(f"push_to_hub: {exc}") from None
        if local_hub is not None:
            return str(self.save_pretrained(Path(local_hub) / repo_id))
        api = HfApi(token=token, library_name="vaeforge", library_version=__version__)
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo, folder_path=self.run_dir, allow_patterns=EXPORT_FILES,
                                 revision=revision, commit_message=commit_message).commit_url


def resolve(name: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
            local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """The folder of an export: ``name`` itself when it is a folder, else the snapshot of the Hub model repo
    ``name`` (downloaded into the Hugging Face cache, or found there offline)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        return Path(snapshot_download(str(name), revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_files_only, allow_patterns=EXPORT_FILES,
                                      library_name="vaeforge", library_version=__version__))
    except (OSError, HFValidationError, EntryNotFoundError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"'{name}' is neither an export folder nor a Hub model repo that could be "
                              f"fetched ({why})") from None


def check_plugins(recorded: list[dict[str, str]]) -> None:
    """Stop when the backbone a model was exported with is not registered, saying where it came from; warn when an
    exported prior's plugin is missing, or an installed plugin is not the recorded one (another distribution or
    version)."""
    for rec in recorded:
        names = REGISTRY.names(rec["kind"])
        if rec["name"] not in names:
            install = "install it, or " if rec["distribution"] else ""
            message = (f"{unknown_choice(rec['kind'] + ' plugin', rec['name'], names)}: the model was exported with "
                       f"it from {_origin(rec)}: {install}pass plugins=[{rec['module']}] if you trust that module "
                       "(a model folder's modules are never imported)")
            if rec["kind"] == "backbone":
                raise ConfigError(message)
            warnings.warn(f"{message}; its exported priors cannot be sampled", stacklevel=3)
            continue
        plugin = REGISTRY.get(rec["kind"], rec["name"])
        if (plugin.distribution, plugin.version) != (rec["distribution"], rec["version"]):
            warnings.warn(f"{rec['kind']} plugin '{rec['name']}': the model was exported with {_origin(rec)}, this "
                          f"is {plugin.origin}", stacklevel=3)


def _origin(rec: dict[str, str]) -> str:
    return f"{rec['distribution']} {rec['version']} ({rec['module']})" if rec["distribution"] else \
        f"module {rec['module']}"


def from_pretrained(name_or_path: str | Path, device: str = "cpu", plugins: Sequence[str] = (), *,
                    revision: str | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
                    token: str | bool | None = None) -> PretrainedVAE:
    """An exported VAE from a folder or a Hub model repo id (``revision``, ``cache_dir``, ``local_files_only``
    and ``token`` as in huggingface_hub), in eval mode on ``device``; ``plugins``: modules to import for a backbone
    that is not installed (never taken from the folder)."""
    folder = resolve(name_or_path, revision, cache_dir, local_files_only, token)
    info = read_info(folder)
    REGISTRY.import_modules(list(plugins))
    check_plugins(info["plugins"])
    image = ImageSpec(int(info["image"]["size"]), int(info["image"]["channels"]))
    vae = build_trained(OmegaConf.create(info["model"]), image, ckpt.load_weights(folder / WEIGHTS_FILE), folder)
    return PretrainedVAE(vae.to(device), folder, info)
