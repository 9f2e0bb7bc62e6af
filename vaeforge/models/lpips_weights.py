"""``python -m vaeforge.models.lpips_weights net=alex|vgg [key=value ...]`` (also ``vaeforge lpips ...``).

Downloads the official LPIPS v0.1 weights on request (never in the middle of a training): torchvision's ImageNet
trunk and the LPIPS project's linear heads, both pickles (``.pth``). They are loaded only with
``torch.load(weights_only=True)`` (tensors and containers, no code runs), their names and shapes are checked and
they are written as one ``lpips_<net>.safetensors`` in the cache, where
:func:`vaeforge.models.lpips.find_lpips_weights` finds it. Options: ``trunk_base=`` / ``head_base=`` (mirrors),
``trunk=<file>`` / ``head=<file>`` (local copies of the .pth files, for offline machines), ``out=<folder>``.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file

from ..cli.logs import entry_point
from ..cli.options import help_text, read_args
from ..config.fields import choice
from ..config.loader import validate_options
from ..data.download import checksum_mismatch, fetch, file_digest
from ..errors import ConfigError, DataError, VaeforgeError
from .lpips import LPIPS, NETS, cache_dir, weights_layout

log = logging.getLogger("vaeforge.models.lpips_weights")  # by name: under vaeforge's also when run as __main__ (python -m)

TRUNK_BASE = "https://download.pytorch.org/models"
HEAD_BASE = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
ABOUT = "Download (or convert local copies of) the official LPIPS v0.1 weights into one checked safetensors file."
USAGE = "vaeforge lpips [net=alex|vgg] [trunk=<.pth> head=<.pth>] [out=<folder>]"
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torchvision's rule: `<name>-<sha256 prefix>.pth`
HEAD_KEY = re.compile(r"^(lin\d+)\.model\.1\.")  # the LPIPS heads' `lin0.model.1.weight` -> `lin0.weight`


@dataclass(frozen=True)
class Source:
    """The official files of one net: torchvision's trunk and the LPIPS v0.1 head, with its SHA-256."""

    trunk: str
    head: str
    head_sha256: str


# Head digests: of weights/v0.1/{alex,vgg}.pth in the PyPI `lpips` 0.1.4 package, the same files as the LPIPS
# repository's. Trunks: only the SHA-256 prefix in torchvision's file name is checked, as torchvision does; no full
# digest is pinned, since no copy of those files was at hand to compute one from.
SOURCES = {
    "alex": Source("alexnet-owt-7be5be79.pth", "alex.pth",
                   "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    "vgg": Source("vgg16-397923af.pth", "vgg.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
}


def trunk_prefix(name: str) -> str:
    """The SHA-256 prefix a torchvision file name carries (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``)."""
    match = HASH_IN_NAME.search(name)
    if not match:
        raise ConfigError(f"trunk file name '{name}' carries no SHA-256 prefix (like alexnet-owt-7be5be79.pth)")
    return match.group(1)


def check_trunk(path: Path, name: str, origin: str) -> None:
    """DataError naming ``origin`` unless the SHA-256 of ``path`` starts with the prefix in ``name``."""
    prefix, digest = trunk_prefix(name), file_digest(path, "sha256")
    if not digest.startswith(prefix):
        raise DataError(f"checksum mismatch for {origin}: expected a SHA-256 starting with {prefix} (from {name}), "
                        f"got {digest}")


def check_head(path: Path, net: str, origin: str) -> None:
    """DataError naming ``origin`` unless ``path`` is the pinned LPIPS v0.1 head of ``net``."""
    problem = checksum_mismatch(path, f"sha256:{SOURCES[net].head_sha256}")
    if problem:
        raise DataError(f"checksum mismatch for {origin}: {problem}")


def load_state(path: Path, origin: str) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict loaded as weights only: a pickle that would run code is refused, naming ``origin``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an untrusted file: whatever fails to load is refused
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{origin}: not a weights-only .pth state dict, refused ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise DataError(f"{origin}: not a state dict of tensors")
    return state


def merge(net: str, trunk: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``lpips_<net>.safetensors``: the trunk's ``features.*`` and the renamed heads, checked."""
    found = {**trunk, **{HEAD_KEY.sub(r"\1.", k): v for k, v in head.items()}}
    layout = weights_layout(net)
    missing = [k for k in layout if k not in found]
    if missing:
        raise DataError(f"the LPIPS-{net} files lack {', '.join(missing[:3])} (not the {net} trunk and head?)")
    wrong = [f"{k} {tuple(found[k].shape)} (expected {shape})" for k, shape in layout.items()
             if tuple(found[k].shape) != shape]
    if wrong:
        raise DataError(f"the LPIPS-{net} files do not fit: {', '.join(wrong[:3])}")
    return {k: found[k].detach().clone().contiguous() for k in layout}


def write_verified(net: str, tensors: dict[str, torch.Tensor], dest: Path) -> Path:
    """Write ``dest`` atomically: via ``dest.part``, renamed only once the LPIPS class loads it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        save_file(tensors, str(part), metadata={"format": "pt", "source": f"LPIPS v0.1 {net}, torchvision trunk"})
        LPIPS(net, part)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def convert(net: str, trunk: Path, head: Path, out: Path | None = None,
            origins: tuple[str, str] | None = None) -> Path:
    """Convert the trunk and head ``.pth`` files (already verified) into ``<out>/lpips_<net>.safetensors``."""
    trunk_origin, head_origin = origins or (str(trunk), str(head))
    tensors = merge(net, load_state(trunk, trunk_origin), load_state(head, head_origin))
    return write_verified(net, tensors, Path(out or cache_dir()) / NETS[net].file)


def obtain(url: str, local: str | None, dest: Path, checksum: str | None, progress: bool) -> tuple[Path, str]:
    """The file ``local`` if given, else ``url`` fetched (resumably) to ``dest``; with its origin for messages."""
    if local:
        if not Path(local).is_file():
            raise DataError(f"{local}: no such file")
        return Path(local), local
    return fetch(url, dest, checksum, progress), url


@dataclass
class LpipsOptions:
    """Which LPIPS net, where its two files come from, and where the converted weights go."""

    net: str = choice("alex", tuple(SOURCES))  # the LPIPS network
    trunk: Optional[str] = None  # a local torchvision trunk .pth (offline); default: downloaded from trunk_base
    head: Optional[str] = None  # a local LPIPS v0.1 head .pth (offline); default: downloaded from head_base
    trunk_base: str = TRUNK_BASE  # where the trunk is downloaded from (a mirror may replace it)
    head_base: str = HEAD_BASE  # where the heads are downloaded from
    trunk_name: Optional[str] = None  # the trunk's file name, whose SHA-256 prefix it must carry; default: torchvision's
    out: Optional[str] = None  # output folder; default: the cache, where training finds the weights
    progress: bool = True  # show download progress


def download(net: str = "alex", **settings: Any) -> Path:
    """Fetch (or take the local ``trunk``/``head``), verify and convert the LPIPS weights of ``net`` with the
    :class:`LpipsOptions` ``settings``.

    ``trunk_name`` replaces torchvision's file name and so the SHA-256 prefix the trunk (downloaded or local) must
    have. Downloads go to ``<cache>/downloads`` (resumable) and are deleted once converted; a failed check leaves
    no output file.
    """
    opts = validate_options(LpipsOptions, {"net": net, **settings}, "lpips")
    source, folder = SOURCES[opts.net], cache_dir() / "downloads"
    trunk_name = opts.trunk_name or source.trunk
    trunk_prefix(trunk_name)  # a bad name fails before any download
    head_path, head_origin = obtain(f"{opts.head_base.rstrip('/')}/{source.head}", opts.head,
                                    folder / f"lpips-v0.1-{source.head}", f"sha256:{source.head_sha256}", opts.progress)
    check_head(head_path, opts.net, head_origin)
    trunk_path, trunk_origin = obtain(f"{opts.trunk_base.rstrip('/')}/{trunk_name}", opts.trunk, folder / trunk_name,
                                      None, opts.progress)
    try:
        check_trunk(trunk_path, trunk_name, trunk_origin)
        result = convert(opts.net, trunk_path, head_path, Path(opts.out) if opts.out else None,
                         (trunk_origin, head_origin))
    except VaeforgeError:
        if not opts.trunk:
            trunk_path.unlink(missing_ok=True)  # a wrong or refused download: nothing that looks complete stays
        raise
    for path, local in ((head_path, opts.head), (trunk_path, opts.trunk)):
        if not local:
            path.unlink(missing_ok=True)  # converted: the pickles are no longer needed
    return result


@entry_point
def main(argv: list[str]) -> None:
    """Parse ``key=value`` arguments, download or convert the weights and print where they are."""
    args = read_args(argv, lambda _: help_text(USAGE, ABOUT, [("options (key=value)", LpipsOptions, "")]))
    path = download(**args)
    log.info(f"wrote {path} (LPIPS-{args.get('net', 'alex')} v0.1, safetensors)")

if __name__ == "__main__":
    main()
