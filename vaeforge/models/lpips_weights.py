"""``python -m vaeforge.models.lpips_weights net=alex|vgg|squeeze [key=value ...]`` (also ``vaeforge lpips ...``).

Downloads the official LPIPS v0.1 weights on request (never in the middle of a training): torchvision's ImageNet
trunk and the LPIPS project's linear heads, both pickles (``.pth``). They are fetched with torch.hub's loader
(``torch.hub.download_url_to_file``: the SHA-256 is checked before the file appears) into torch.hub's cache
(``<torch.hub.get_dir()>/checkpoints``, where torchvision keeps the same trunks), loaded only with
``torch.load(weights_only=True)`` (tensors and containers, no code runs), their names and shapes are checked
against torchvision's model definition, and they are written as one ``lpips_<net>.safetensors`` in the vaeforge
cache, where :func:`vaeforge.models.lpips.find_lpips_weights` finds it. Options: ``trunk_base=`` / ``head_base=``
(mirrors), ``trunk=<file>`` / ``head=<file>`` (local copies of the .pth files, for offline machines), ``out=<folder>``.
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
from ..data.download import file_digest
from ..errors import ConfigError, DataError, VaeforgeError
from .lpips import LPIPS, NETS, cache_dir, weights_layout

log = logging.getLogger("vaeforge.models.lpips_weights")  # by name: under vaeforge's also when run as __main__ (python -m)

HEAD_BASE = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
ABOUT = "Download (or convert local copies of) the official LPIPS v0.1 weights into one checked safetensors file."
USAGE = "vaeforge lpips [net=alex|vgg|squeeze] [trunk=<.pth> head=<.pth>] [out=<folder>]"
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torchvision's (and torch.hub's) rule: `<name>-<sha256 prefix>.pth`
HEAD_KEY = re.compile(r"^(lin\d+)\.model\.1\.")  # the LPIPS heads' `lin0.model.1.weight` -> `lin0.weight`

# SHA-256 of weights/v0.1/{alex,vgg,squeeze}.pth in the PyPI `lpips` 0.1.4 package, the same files as the LPIPS
# repository's. Trunks: the SHA-256 prefix in torchvision's file name is checked, as torch.hub does.
HEAD_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "squeeze": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
}
TRUNK_BASE, _ = NETS["alex"].url.rsplit("/", 1)  # torchvision's download folder, the same for every trunk


def trunk_file_name(net: str) -> str:
    """torchvision's file name of the ImageNet trunk of ``net`` (``alexnet-owt-7be5be79.pth``)."""
    return NETS[net].url.rsplit("/", 1)[1]


def head_file_name(net: str) -> str:
    """The LPIPS v0.1 head's name in torch.hub's cache, its SHA-256 prefix in it as in torchvision's names."""
    return f"lpips_v0.1_{net}-{HEAD_SHA256[net][:8]}.pth"


def trunk_prefix(name: str) -> str:
    """The SHA-256 prefix a torchvision file name carries (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``)."""
    match = HASH_IN_NAME.search(name)
    if Path(name).name != name:
        raise ConfigError(f"trunk file name '{name}' is a path: give the file's name (trunk= takes a local file)")
    if not match:
        raise ConfigError(f"trunk file name '{name}' carries no SHA-256 prefix (like alexnet-owt-7be5be79.pth)")
    return match.group(1)


def check_sha256(path: Path, prefix: str, origin: str) -> None:
    """DataError naming ``origin`` unless the SHA-256 of ``path`` starts with ``prefix`` (a whole digest or not)."""
    digest = file_digest(path, "sha256")
    if not digest.startswith(prefix):
        raise DataError(f"checksum mismatch for {origin}: expected a SHA-256 starting with {prefix}, got {digest}")


def hub_download(url: str, dest: Path, sha256_prefix: str, progress: bool) -> None:
    """``url`` to ``dest`` through torch.hub's loader: written under a temporary name, its SHA-256 checked against
    ``sha256_prefix``, and only then renamed to ``dest``; a failed check or download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=sha256_prefix, progress=progress)
    except RuntimeError as exc:  # torch.hub's `invalid hash value (expected ..., got ...)`
        raise DataError(f"checksum mismatch for {url}: {exc}") from None
    except (OSError, ValueError) as exc:  # URLError, HTTPError, connection resets, unknown URL schemes
        raise DataError(f"cannot download {url}: {exc}") from None


@dataclass(frozen=True)
class Obtained:
    """A verified ``.pth`` file, the name messages use for it, and whether this call downloaded it."""

    path: Path
    origin: str
    downloaded: bool


def obtain(url: str, local: str | None, cached: Path, sha256_prefix: str, progress: bool) -> Obtained:
    """The file ``local`` if given, else torch.hub's cached copy ``cached``, else ``url`` downloaded into that
    cache; checked against ``sha256_prefix`` in every case (a cached file again: caches outlive their checks)."""
    if local:
        if not Path(local).is_file():
            raise DataError(f"{local}: no such file")
        check_sha256(Path(local), sha256_prefix, local)
        return Obtained(Path(local), local, False)
    if cached.is_file():
        check_sha256(cached, sha256_prefix, f"{cached} (torch.hub's cached copy of {url}: delete it to download "
                                            "it again)")
        return Obtained(cached, str(cached), False)
    hub_download(url, cached, sha256_prefix, progress)
    return Obtained(cached, url, True)


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


def convert(net: str, trunk: Obtained, head: Obtained, out: Path | None = None) -> Path:
    """Convert the (verified) trunk and head ``.pth`` files into ``<out>/lpips_<net>.safetensors``."""
    tensors = merge(net, load_state(trunk.path, trunk.origin), load_state(head.path, head.origin))
    return write_verified(net, tensors, Path(out or cache_dir()) / NETS[net].file)


@dataclass
class LpipsOptions:
    """Which LPIPS net, where its two files come from, and where the converted weights go."""

    net: str = choice("alex", tuple(HEAD_SHA256))  # the LPIPS network
    trunk: Optional[str] = None  # a local torchvision trunk .pth (offline); default: torch.hub's cache, else trunk_base
    head: Optional[str] = None  # a local LPIPS v0.1 head .pth (offline); default: torch.hub's cache, else head_base
    trunk_base: str = TRUNK_BASE  # where the trunk is downloaded from (a mirror may replace it)
    head_base: str = HEAD_BASE  # where the heads are downloaded from
    trunk_name: Optional[str] = None  # the trunk's file name, whose SHA-256 prefix it must carry; default: torchvision's
    out: Optional[str] = None  # output folder; default: the cache, where training finds the weights
    progress: bool = True  # show download progress


def download(net: str = "alex", **settings: Any) -> Path:
    """Fetch (or take the local ``trunk``/``head``), verify and convert the LPIPS weights of ``net`` with the
    :class:`LpipsOptions` ``settings``.

    ``trunk_name`` replaces torchvision's file name and so the SHA-256 prefix the trunk (downloaded or local) must
    have. Downloads stay in torch.hub's cache (a second call, or torchvision, finds them there); a trunk this call
    downloaded whose content is then refused is deleted, and a failed check leaves no output file.
    """
    opts = validate_options(LpipsOptions, {"net": net, **settings}, "lpips")
    trunk_name = opts.trunk_name or trunk_file_name(opts.net)
    prefix = trunk_prefix(trunk_name)  # a bad name fails before any download
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    head = obtain(f"{opts.head_base.rstrip('/')}/{opts.net}.pth", opts.head, hub / head_file_name(opts.net),
                  HEAD_SHA256[opts.net], opts.progress)
    trunk = obtain(f"{opts.trunk_base.rstrip('/')}/{trunk_name}", opts.trunk, hub / trunk_name, prefix, opts.progress)
    try:
        return convert(opts.net, trunk, head, Path(opts.out) if opts.out else None)
    except VaeforgeError:
        if trunk.downloaded:  # its prefix matched but its content is refused: nobody should find it in the cache
            trunk.path.unlink(missing_ok=True)
        raise


@entry_point
def main(argv: list[str]) -> None:
    """Parse ``key=value`` arguments, download or convert the weights and print where they are."""
    args = read_args(argv, lambda _: help_text(USAGE, ABOUT, [("options (key=value)", LpipsOptions, "")]))
    path = download(**args)
    log.info(f"wrote {path} (LPIPS-{args.get('net', 'alex')} v0.1, safetensors)")

if __name__ == "__main__":
    main()
