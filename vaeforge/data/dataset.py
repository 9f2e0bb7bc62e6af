"""What a dataset gives the writer (:mod:`.build`): the options every dataset takes, the files of its source (a
folder, a .zip or a .tgz), its images with their sample keys, and the :class:`Dataset` that describes it."""
from __future__ import annotations

import hashlib
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from omegaconf import MISSING
from PIL import Image
from tqdm import tqdm

from ..config.fields import at_least, choice
from ..config.schema import ON_ERROR
from ..errors import DataError
from .download import file_digest
from .images import IMAGE_SUFFIXES, Crop
from .labels import Labels, read_bytes


@dataclass
class PrepareConfig:
    """The options every dataset takes (each dataset's options add their own); normalised, they are recorded as
    the manifest's ``config``."""

    source: str = MISSING  # URL, archive (.tgz, .zip) or folder
    out: str = MISSING  # output folder: shards and manifest.json (replaced only once complete)
    image_size: int = at_least(1, 64)  # side of the square RGB images written
    val_fraction: float = 0.05  # share of the images in the val split, in [0, 1): whole identities when the images have them
    checksum: Optional[str] = None  # md5:<hex> or sha256:<hex> of the archive (known for LFW's official URL)
    train_shards: int = at_least(1, 16)  # shard files of the train split
    val_shards: int = at_least(1, 4)  # shard files of the val split
    seed: int = at_least(0, 0)  # seed of the split and the shard order
    on_error: str = choice("raise", ON_ERROR)  # a bad image (unreadable, or of a size the dataset cannot cut): raise (naming it) or skip (listed in the summary and manifest)


@dataclass(frozen=True)
class SourceFile:
    """A file of a source: its name in the source (``/``-separated), where it is (for errors), how to read it."""

    name: str
    where: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class SourceImage:
    """One image as the writer takes it: its sample key, its person (None: the dataset has no identities), the
    name its labels are keyed by (recorded in its sample as ``file``), where it is and how to read its bytes."""

    key: str
    identity: Optional[str]
    file: str
    where: str
    read: Callable[[], bytes]

    @property
    def group(self) -> str:
        """What the split keeps together: the person, or the image itself when there are no identities."""
        return self.file if self.identity is None else self.identity


def any_image(img: Image.Image, where: str) -> None:
    """A dataset that takes images of any size checks nothing before cropping."""


@dataclass(frozen=True)
class Dataset:
    """One kind of source as the writer sees it; the split, shards, manifest and up-to-date check are the
    writer's."""

    name: str  # recorded as the manifest's "dataset"
    options: type  # its options dataclass: PrepareConfig plus its own
    settings: Callable[[dict[str, Any]], dict[str, Any]]  # its own options checked and normalised (-> manifest's config)
    wanted: Callable[[str], bool]  # whether a file of the source (by its name in the source) is one of its images
    read: Callable[[Path, dict[str, Any]], tuple[list[SourceImage], Labels]]  # the images and labels of a source
    crop: Callable[[dict[str, Any]], Crop]  # the manifest's "crop", from the settings
    label_files: tuple[str, ...] = ()  # settings naming label files: their bytes decide whether an output is up to date
    check: Callable[[Image.Image, str], None] = any_image  # a DataError naming ``where`` for an image it cannot take
    checksums: Mapping[str, str] = field(default_factory=dict)  # known checksums of its public URLs


def sample_key(name: str) -> str:
    """An image's sample key: its name without the image extension, with ``%``, ``.`` and ``/`` percent-encoded
    (a tar reader takes a member name's first dot as the start of its extension, and a slash as a folder), so
    that any file name survives into the stream."""
    suffix = PurePosixPath(name).suffix
    stem = name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name
    return stem.replace("%", "%25").replace(".", "%2E").replace("/", "%2F")


def source_files(source: Path, wanted: Callable[[str], bool]) -> list[SourceFile]:
    """The wanted files of a folder, a .zip or a .tgz, sorted by name. In an archive, names are relative to the
    innermost folder that holds all the wanted files (``img_align_celeba.zip`` holds ``img_align_celeba/...``)."""
    if source.is_dir():
        return _folder_files(source, wanted)
    files = _zip_files(source, wanted) if source.suffix.lower() == ".zip" else _tgz_files(source, wanted)
    return sorted(_inside_common_folder(files), key=lambda file: file.name)


def source_digest(source: Path, wanted: Callable[[str], bool]) -> str:
    """sha256 of an archive, or over the names and bytes of a folder's wanted files: changes when any does."""
    if not source.is_dir():
        return file_digest(source, "sha256")
    digest = hashlib.sha256()
    for file in _folder_files(source, wanted):
        data = file.read()
        digest.update(f"{file.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _folder_files(folder: Path, wanted: Callable[[str], bool]) -> list[SourceFile]:
    """The wanted files anywhere under a folder, read when asked for."""
    names = ((path, path.relative_to(folder).as_posix()) for path in folder.rglob("*"))
    files = [SourceFile(name, str(path), partial(read_bytes, path)) for path, name in names
             if wanted(name) and path.is_file()]
    return sorted(files, key=lambda file: file.name)


def _zip_files(archive: Path, wanted: Callable[[str], bool]) -> list[SourceFile]:
    """The wanted members of a .zip, each read from it when asked for (the archive stays open meanwhile)."""
    try:
        opened = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: not a complete .zip archive ({exc})") from None
    return [SourceFile(info.filename, f"{archive}:{info.filename}", partial(_zip_member, opened, info))
            for info in opened.infolist() if not info.is_dir() and wanted(info.filename)]


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes; a damaged member (bad CRC, cut short) is a DataError naming it."""
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive.filename}:{info.filename}: cannot read ({exc})") from None


def _tgz_files(archive: Path, wanted: Callable[[str], bool]) -> list[SourceFile]:
    """The wanted members of a gzipped tar, streamed once into memory (with a progress bar over its bytes); a
    truncated or non-gzip archive is a DataError naming it."""
    files = []
    try:
        with open(archive, "rb") as raw, tqdm.wrapattr(raw, "read", total=archive.stat().st_size, unit="B",
                                                      unit_scale=True, desc=f"read {archive.name}") as counted, \
                tarfile.open(fileobj=counted, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and wanted(member.name):
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    files.append(SourceFile(member.name, f"{archive}:{member.name}", partial(bytes, data)))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a complete .tgz archive ({exc})") from None
    return files


def _inside_common_folder(files: list[SourceFile]) -> list[SourceFile]:
    """The files renamed relative to the innermost folder that holds them all."""
    while files and all("/" in file.name for file in files) and len({file.name.split("/")[0] for file in files}) == 1:
        files = [SourceFile(file.name.split("/", 1)[1], file.where, file.read) for file in files]
    return files
