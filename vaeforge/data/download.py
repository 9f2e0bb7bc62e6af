"""Resumable, checksum-verified downloads: a file appears at ``dest`` only once it is complete and verified."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from ..errors import ConfigError, DataError

ALGORITHMS = ("md5", "sha256")
CHUNK = 1 << 20
ATTEMPTS = 3
TIMEOUT = 60.0


def file_digest(path: str | Path, algo: str) -> str:
    """Hex digest of a file's bytes with ``algo`` (``md5`` or ``sha256``), read in chunks."""
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` / ``"sha256:<hex>"`` into (algorithm, lower-case hex); ConfigError otherwise."""
    algo, _, hexdigest = checksum.partition(":")
    algo = algo.lower()
    size = hashlib.new(algo).digest_size * 2 if algo in ALGORITHMS else 0
    if not size or not re.fullmatch(rf"[0-9a-fA-F]{{{size}}}", hexdigest):
        raise ConfigError(f"checksum '{checksum}' is not of the form md5:<32 hex> or sha256:<64 hex>")
    return algo, hexdigest.lower()


def checksum_mismatch(path: Path, checksum: str) -> str | None:
    """None if ``path`` has the digest ``checksum``, else ``"expected <algo:hex>, got <algo:hex>"``."""
    algo, expected = parse_checksum(checksum)
    actual = file_digest(path, algo)
    return None if actual == expected else f"expected {algo}:{expected}, got {algo}:{actual}"


def fetch(url: str, dest: Path, checksum: str | None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed if present), verify ``checksum``, then rename.

    An existing ``dest`` that matches the checksum (or any existing ``dest`` when no checksum is given,
    since it only appears once complete) is reused without a download.
    """
    dest = Path(dest)
    if checksum:
        parse_checksum(checksum)  # a malformed checksum fails before the download, not after
    if dest.is_file() and not (checksum and checksum_mismatch(dest, checksum)):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _download_with_retries(url, part, progress)
    problem = checksum and checksum_mismatch(part, checksum)
    if problem:
        part.unlink()
        raise DataError(f"checksum mismatch for {url}: {problem}")
    os.replace(part, dest)
    return dest


def _download_with_retries(url: str, part: Path, progress: bool) -> None:
    """Download into ``part``, resuming after a dropped connection up to ATTEMPTS times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _download(url, part, progress)
            return
        except urllib.error.HTTPError as exc:
            raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            if attempt == ATTEMPTS:
                reason = getattr(exc, "reason", None) or exc
                raise DataError(f"cannot download {url}: {reason} (partial file kept for resume: {part})") from None


def _download(url: str, part: Path, progress: bool) -> None:
    """One request: ask for the bytes after those already in ``part`` and append them."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:  # 416: nothing after offset, the .part is stale: start over
            raise
        part.unlink()
        offset, response = 0, urllib.request.urlopen(url, timeout=TIMEOUT)
    with response:
        if response.status != 206:  # the server ignored the Range header and sends everything
            offset = 0
        remaining = response.headers.get("Content-Length")
        total = offset + int(remaining) if remaining is not None else None
        with open(part, "ab" if offset else "wb") as f:
            _copy(response, f, url, total, offset, progress)
    if total is not None and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _copy(src: BinaryIO, dst: BinaryIO, url: str, total: int | None, offset: int, progress: bool) -> None:
    """Copy the response body in chunks with a byte progress bar."""
    name = url.rsplit("/", 1)[-1] or url
    with tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            dst.write(chunk)
            bar.update(len(chunk))
