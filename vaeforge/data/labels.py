"""The per-image label table every dataset's label files are read into, and the helpers their readers share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

REAL, BINARY = "real", "binary"


@dataclass
class Labels:
    """Per-image labels (image file name -> column -> value) and each column's kind (``real``/``binary``)."""

    kinds: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def merge(self, other: Labels) -> Labels:
        """The union of two label sets; a column defined by both is a DataError."""
        clash = sorted(self.kinds.keys() & other.kinds.keys())
        if clash:
            raise DataError(f"label column(s) {', '.join(clash)} defined by two label files")
        values = {file: dict(row) for file, row in self.values.items()}
        for file, row in other.values.items():
            values.setdefault(file, {}).update(row)
        return Labels({**self.kinds, **other.kinds}, values)


def read_bytes(path: Path) -> bytes:
    """A file's bytes; an unreadable file is a DataError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_lines(path: Path) -> list[str]:
    """A text file's lines without line ends; missing or non-UTF-8 files are DataErrors naming them."""
    try:
        return read_bytes(path).decode("utf-8-sig").splitlines()  # -sig: a leading BOM (Excel) is no column name
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def bad_line(path: Path, lineno: int, problem: str) -> DataError:
    """The error for a malformed label file line."""
    return DataError(f"{path}, line {lineno}: {problem}")

