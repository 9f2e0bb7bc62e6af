"""Progress bars of the library's long steps (encoding a split, fitting a prior, writing shards): tqdm on
stderr, redrawn at most every 2 s, silent with ``TQDM_DISABLE=1``."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def bar(iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None, unit: str = "it",
        enabled: bool = True) -> tqdm:
    """A progress bar over ``iterable`` (or updated by hand); ``enabled=False`` silences it, otherwise tqdm's
    default applies (``TQDM_DISABLE``)."""
    off = {} if enabled else {"disable": True}
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=2.0, **off)
