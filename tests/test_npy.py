"""vaeforge.data.npy.read_npy: the same arrays as np.load, header formats 1.0 and 2.0, bad bytes refused."""
import io

import numpy as np
import pytest

from vaeforge.data import npy
from vaeforge.data.npy import read_npy


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0)])
@pytest.mark.parametrize("array", [
    np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.arange(5, dtype=">i4"),
])
def test_same_array_as_np_load(array, version):
    data = npy_bytes(array, version)
    for _ in range(2):  # the second read takes the remembered header
        out = read_npy(data)
        expected = np.load(io.BytesIO(data), allow_pickle=False)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
        assert out.flags.writeable
        out[...] = 0  # a copy: the bytes' next read is unchanged
    np.testing.assert_array_equal(read_npy(data), array)


def test_headers_are_remembered_and_bounded():
    npy._headers.clear()
    data = npy_bytes(np.zeros((2, 2, 3), np.uint8))
    read_npy(data)
    read_npy(data)
    assert len(npy._headers) == 1
    for n in range(npy._MAX_HEADERS + 5):
        read_npy(npy_bytes(np.zeros(n + 1, np.uint8)))
    assert len(npy._headers) <= npy._MAX_HEADERS


def test_truncated_array_refused():
    data = npy_bytes(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="bytes of array data, expected 192"):
        read_npy(data[:-1])


def test_not_npy_refused():
    with pytest.raises(ValueError, match="not an .npy file"):
        read_npy(b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_object_array_never_unpickled():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        read_npy(buffer.getvalue())
