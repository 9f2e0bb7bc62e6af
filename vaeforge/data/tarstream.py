"""Shards' tar members, read sequentially and fast, for webdataset's sample pipeline.

webdataset expands shards with Python's ``tarfile``, which parses every field of every header: for two members
per LFW sample that costs more than decoding the sample's pixels. Shards are plain tar streams
(ustar, with pax or GNU long-name records for long names), so a member needs only its name, size, type and
header checksum. A short read, a missing end-of-archive block or a bad checksum is an error here (``tarfile``
in stream mode silently ends the shard at a damaged or missing header, losing the rest without a word).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from webdataset.tariterators import group_by_keys

from ..errors import DataError
from .sources import read

BLOCK = 512
_END = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular file (old and new style), contiguous file


class TarError(ValueError):
    """The stream is not a valid tar archive (truncated, or a damaged header)."""


def _number(field: bytes, what: str) -> int:
    """An octal header field (base-256 sizes, for members over 8 GiB, are not used by shards)."""
    try:
        return int(field.rstrip(b" \0").lstrip(b" ") or b"0", 8)
    except ValueError:
        raise TarError(f"unexpected tar header (its {what} field is {field!r}): damaged or not a tar file") from None


def _pax_path(records: bytes) -> str | None:
    """The ``path`` of a pax extended header ("<length> <key>=<value>\\n" records), if it sets one."""
    position = 0
    while position < len(records):
        length = int(records[position:records.index(b" ", position)])
        key, _, value = records[records.index(b" ", position) + 1:position + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        position += length
    return None


def members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each regular file in a tar stream, in order; ``TarError`` on a damaged stream."""
    read = stream.read
    long_name: str | None = None
    while True:
        header = read(BLOCK)
        if header == _END:
            return
        if len(header) < BLOCK:  # every tar writer ends the archive with zero blocks: a stream without is cut
            raise TarError(f"unexpected end of data (the shard ends {len(header)} bytes into a tar header, with "
                           "no end-of-archive block): truncated")
        if sum(header) - sum(header[148:156]) + 8 * 32 != _number(header[148:156], "checksum"):
            raise TarError("unexpected tar header (bad checksum): damaged or not a tar file")
        size, kind = _number(header[124:136], "size"), header[156:157]
        data = read(size)
        if len(data) < size:
            raise TarError(f"unexpected end of data (a member of {size} bytes has {len(data)})")
        read(-size % BLOCK)  # padding to the next block
        if kind == b"x":
            long_name = _pax_path(data) or long_name
        elif kind == b"L":  # GNU long name
            long_name = data.rstrip(b"\0").decode("utf-8")
        elif kind in _FILE_TYPES:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            yield long_name or (f"{prefix.decode('utf-8')}/{name}" if prefix else name), data
            long_name = None
        elif kind != b"g":  # directories, links and other entries carry no sample data
            long_name = None


def expand(shards: Iterable[str], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """Shards (paths, URLs, ``pipe:`` commands) -> file samples for webdataset's ``group_by_keys``, with the
    end-of-shard marker it expects. An error goes to ``handler`` as a DataError naming the shard; when the
    handler returns True the rest of that shard is skipped."""
    for url in shards:
        try:
            for name, data in read(url, members):
                yield {"fname": name, "data": data, "__url__": url}
            yield {}
        except Exception as exc:
            if not handler(DataError(f"shard {url}: {exc}")):
                return


def shard_samples(shards: Iterable[str], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """The samples of ``shards`` in file order, as webdataset's ``tarfile_to_samples`` gives them
    (``{"__key__", "__url__", <extension>: bytes, ...}``), read with ``members`` (a remote shard that fails is
    read again: see ``sources.read``)."""
    return group_by_keys(expand(shards, handler), handler=handler)
