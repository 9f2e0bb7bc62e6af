"""Read a sample's ``.npy`` bytes fast and safely.

``np.load`` parses each file's header (a Python literal, through ``ast``) anew: for small samples that all share
one header, a large share of the loader's time. Here a header is parsed once by
numpy's own reader and remembered; the array is then copied straight out of the bytes. Object arrays
(pickles) are refused.
"""
from __future__ import annotations

import io

import numpy as np

_MAX_HEADERS = 64  # distinct headers remembered (a dataset has one per image size)
_headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def _parse_header(data: bytes) -> tuple[int, tuple[tuple[int, ...], bool, np.dtype]]:
    """(offset of the array data, (shape, fortran order, dtype)), the header parsed by numpy once per header."""
    if not data.startswith(np.lib.format.MAGIC_PREFIX) or len(data) < 10:
        raise ValueError("not an .npy file (bad magic bytes)")
    size_bytes = 2 if data[6] == 1 else 4  # format 1.0: uint16 header length; 2.0 and 3.0: uint32
    start = 8 + size_bytes + int.from_bytes(data[8 : 8 + size_bytes], "little")
    header = data[:start]
    parsed = _headers.get(header)
    if parsed is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        parsed = read(stream)
        if parsed[2].hasobject:
            raise ValueError("object arrays are not read (they would need pickle)")
        if len(_headers) >= _MAX_HEADERS:
            _headers.clear()
        _headers[header] = parsed
    return start, parsed


def read_npy(data: bytes) -> np.ndarray:
    """The array stored in ``data`` (the bytes of an .npy file), writable; ``ValueError`` when it is not one."""
    start, (shape, fortran, dtype) = _parse_header(data)
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - start != count * dtype.itemsize:
        raise ValueError(f"{len(data) - start} bytes of array data, expected {count * dtype.itemsize} for "
                         f"{dtype} {list(shape)}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return flat.reshape(shape, order="F" if fortran else "C").copy()  # writable: torch shares its memory
