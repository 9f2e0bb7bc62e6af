"""The fast tar reader gives exactly what Python's tarfile reads, and never ends a damaged shard quietly."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from vaeforge.data.tarstream import TarError, members, shard_samples
from vaeforge.errors import DataError


def tar_bytes(files: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE  # an entry without sample data: skipped
        tar.addfile(folder)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_prepared_shard_reads_as_tarfile_reads_it(lfw64: Path):
    shard = lfw64 / "train-000000.tar"
    with tarfile.open(shard) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    with open(shard, "rb") as stream:
        assert list(members(stream)) == expected
    assert len(expected) > 100


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_and_unicode_names_in_every_format(fmt):
    files = [("a" * 150 + ".npy", b"x" * 513), ("José_Saramago_0001.json", b"{}"), ("empty.cls", b"")]
    if fmt == tarfile.USTAR_FORMAT:  # ustar holds long names as prefix/name, split at a slash
        files[0] = ("p" * 120 + "/" + "a" * 30 + ".npy", b"x" * 513)
    assert list(members(io.BytesIO(tar_bytes(files, fmt)))) == files


def test_every_truncation_is_an_error():
    whole = tar_bytes([("k1.npy", b"a" * 700), ("k1.json", b"{}"), ("k2.npy", b"b" * 1024)])
    end = whole.index(b"b" * 1024) + 1024 + 512  # past the last member's data and one zero block
    for cut in range(0, end, 97):
        with pytest.raises(TarError, match="unexpected end of data"):
            list(members(io.BytesIO(whole[:cut])))


def test_a_damaged_header_is_an_error_not_an_early_end():
    whole = bytearray(tar_bytes([("k1.npy", b"a" * 600), ("k2.npy", b"b" * 10)]))
    second = whole.index(b"k2.npy")
    whole[second + 1] ^= 0xFF
    with pytest.raises(TarError, match="bad checksum"):
        list(members(io.BytesIO(bytes(whole))))
    whole[second + 1] ^= 0xFF
    whole[second + 124:second + 136] = b"garbage!!!!\0"  # size field, checksum fixed to match
    whole[second + 148:second + 156] = b" " * 8
    whole[second + 148:second + 155] = b"%06o\0" % sum(whole[second:second + 512])
    with pytest.raises(TarError, match="size field"):
        list(members(io.BytesIO(bytes(whole))))


def test_samples_match_webdataset_and_errors_name_the_shard(lfw64: Path, tmp_path: Path):
    shards = [str(lfw64 / "train-000000.tar"), str(lfw64 / "train-000001.tar")]
    ours = list(shard_samples(shards, wds.reraise_exception))
    theirs = list(wds.tarfile_to_samples()(iter([{"url": u} for u in shards])))
    assert ours == theirs
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(shards[0]).read_bytes()[:5000])
    seen: list[Exception] = []
    kept = list(shard_samples([str(cut), shards[1]], lambda exc: seen.append(exc) or True))
    assert [s["__key__"] for s in kept[-len(theirs) // 2:]] == [s["__key__"] for s in theirs[-len(theirs) // 2:]]
    assert len(seen) == 1 and isinstance(seen[0], DataError) and f"shard {cut}: unexpected end of data" in str(seen[0])
