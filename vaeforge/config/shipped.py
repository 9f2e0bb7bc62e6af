"""Files named by ``NAME`` on the command line (``recipe=``, ``slurm=``): the user's folder, then vaeforge's own.

Both are package data (``vaeforge.recipes``, ``vaeforge.slurm``), so a name works from an installed wheel as it
does from a checkout; so does the DeepSpeed JSON the shipped accelerate configs name (``recipes/deepspeed/...``)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped_dir(package: str) -> Path:
    """The folder of a data package of vaeforge (``vaeforge.recipes``, ``vaeforge.slurm``), wherever it is installed."""
    return Path(str(resources.files(package)))


def search_dirs(folder: str, package: str) -> list[Path]:
    """Where ``NAME`` is looked up, first match wins: ``./<folder>``, then the copy shipped in ``package``."""
    return [Path.cwd() / folder, shipped_dir(package)]


def named_files(folder: str, package: str, suffix: str = ".yaml") -> dict[str, Path]:
    """``NAME`` -> file for every ``*<suffix>`` of :func:`search_dirs`, a file of ``./<folder>`` winning."""
    found: dict[str, Path] = {}
    for directory in reversed(search_dirs(folder, package)):
        found.update({path.stem: path for path in sorted(directory.glob(f"*{suffix}"))})
    return found
