"""Where a prepared dataset is, and reading its files from there.

``data.shards`` takes one of these forms:

- a folder (``data/lfw64``) or the http(s) URL of one (``https://host/lfw64``): ``manifest.json`` and the
  shards it lists are in it;
- a shard pattern: a file name ending in ``.tar``, with braces to name several (``train-{000000..000015}.tar``),
  after a folder or URL, or inside a ``pipe:`` command (``pipe:cat /data/lfw64/train-{000000..000015}.tar``).
  The pattern selects those shards; any other file (``manifest.json``, the shards of a split the pattern selects
  none of) is read the same way with the pattern's file name replaced by the file's, so the manifest is the
  one beside the shards (``data.manifest`` reads it from elsewhere).

Files are opened with webdataset's ``gopen``: local paths directly, http(s) through ``curl``, ``pipe:`` through
the shell. A remote read that fails (a dropped connection, a command's non-zero exit, a stream cut short) is
read again, up to ``ATTEMPTS`` times, skipping what was already given: a failure costs time, never data, and
the last one is raised naming the file.
"""
from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

from braceexpand import braceexpand
from webdataset.gopen import Pipe, gopen

from ..errors import DataError

ATTEMPTS = 3  # reads of a remote file before its failure is raised
RETRY_SECONDS = 1.0  # pause before the second read; the n-th waits n - 1 times this
PIPE = "pipe:"
_PATTERN = re.compile(r"[^/\s]*\.tar(?=\s|$)")  # the last word ending in .tar, after the last slash
_DRAIN = 1 << 16
_CURL_EXITS = {  # curl's exit statuses for network failures (webdataset runs it silent)
    6: "cannot resolve the host", 7: "cannot connect", 18: "the connection closed mid-transfer",
    22: "HTTP error: no such file?", 28: "timed out", 52: "empty reply", 56: "the connection broke mid-transfer",
}
T = TypeVar("T")


def is_local(location: str) -> bool:
    """A path on this machine (not a URL, not a ``pipe:`` command)."""
    return urlparse(location).scheme == ""


@dataclass(frozen=True)
class Source:
    """The place ``data.shards`` names: file ``name`` of the dataset is at ``where(name)``."""

    head: str
    tail: str = ""
    names: tuple[str, ...] = ()  # the shards a pattern selects; (): every shard of the manifest

    def where(self, name: str) -> str:
        return f"{self.head}{name}{self.tail}"


def parse(shards: str) -> Source:
    """The :class:`Source` of a ``data.shards`` value (see the module's docstring for its forms)."""
    found = list(_PATTERN.finditer(shards))
    if found:
        pattern = found[-1]
        return Source(shards[:pattern.start()], shards[pattern.end():], tuple(braceexpand(pattern.group())))
    if shards.startswith(PIPE):
        raise DataError(f"data.shards='{shards}': a pipe: command names its shards by a file name ending in .tar "
                        "(e.g. pipe:cat /data/lfw64/train-{000000..000015}.tar)")
    return Source(shards.rstrip("/") + "/")


def refuse_saved_command(key: str, value: str, fix: str) -> None:
    """A run folder is data: a ``pipe:`` command saved in its config (as ``key``) is refused; ``fix`` says how to
    name it again."""
    if value.startswith(PIPE):
        raise DataError(f"the run reads its data with a command ({key}='{value}'); a run folder's commands are not "
                        f"run: {fix}")


def read(location: str, parse_stream: Callable[[BinaryIO], Iterator[T]]) -> Iterator[T]:
    """The items ``parse_stream`` reads from the file at ``location``. A remote one is read again after a failure,
    up to ATTEMPTS times (a warning says so), its items already given skipped; then the failure is raised as an
    ``OSError``. A local file is read once and its error raised as it is."""
    if urlparse(location).scheme in ("http", "https") and shutil.which("curl") is None:
        raise OSError("http(s) data is read with curl, which is not installed")
    attempts = 1 if is_local(location) else ATTEMPTS
    given = 0
    for attempt in range(1, attempts + 1):
        try:
            with contextlib.closing(_read_once(location, parse_stream)) as items:
                for item in itertools.islice(items, given, None):
                    given += 1
                    yield item
            return
        except Exception as exc:
            if attempts == 1:
                raise
            if attempt == attempts:
                raise OSError(f"{exc} ({attempts} attempts)") from None
            warnings.warn(f"{location}: {exc}; reading it again (attempt {attempt + 1} of {attempts})")
            time.sleep(RETRY_SECONDS * attempt)


def read_bytes(location: str) -> bytes:
    """All the bytes of the file at ``location`` (remote: with retries, see :func:`read`)."""
    return b"".join(read(location, lambda stream: iter([stream.read()])))


def _read_once(location: str, parse_stream: Callable[[BinaryIO], Iterator[T]]) -> Iterator[T]:
    """One read of the file at ``location``, to its end: the exit status of the command behind a stream (curl, a
    ``pipe:``) is then known, and a failed one is raised as an ``OSError`` saying why."""
    stream = gopen(location, "rb")
    try:
        yield from parse_stream(stream)
        while stream.read(_DRAIN):
            pass
        failure = _close(stream)
    except Exception:
        failure = _close(stream)
        if not failure:
            raise
    finally:
        _close(stream)  # the reader stopped early: the command's exit status says nothing then
    if failure:
        raise OSError(failure)


def _close(stream: BinaryIO | Pipe) -> str:
    """Close a stream; why the command behind it failed ('' if it did not, and for a file)."""
    if not isinstance(stream, Pipe):
        stream.close()
        return ""
    try:
        stream.close()
    except OSError:  # a non-zero exit status
        command, status = stream.args[0][0], stream.status
        if isinstance(command, list):  # http(s): curl
            return f"curl exit {status}" + (f" ({_CURL_EXITS[status]})" if status in _CURL_EXITS else "")
        return f"'{command}' exited with status {status}"
    return ""
