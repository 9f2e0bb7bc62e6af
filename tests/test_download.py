"""fetch() against a local 127.0.0.1 server serving the real LFW archive; prepare() from a URL."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from vaeforge.data.download import fetch
from vaeforge.data.build import prepare
from vaeforge.errors import ConfigError, DataError

DROP_AFTER = 10 * 1024 * 1024


def md5(path: Path) -> str:
    """The md5 of a file, computed independently of the code under test."""
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tgz_md5(lfw_tgz: Path) -> str:
    return md5(lfw_tgz)


def test_full_download_verified(http_server, lfw_tgz, tgz_md5, tmp_path):
    server = http_server(lfw_tgz.parent)
    dest = fetch(f"{server.url}/{lfw_tgz.name}", tmp_path / "lfw.tgz", f"md5:{tgz_md5}", progress=False)
    assert dest == tmp_path / "lfw.tgz" and md5(dest) == tgz_md5
    assert server.requests == [(f"/{lfw_tgz.name}", None)]
    assert list(tmp_path.iterdir()) == [dest]


def test_dropped_connection_resumes_with_range(http_server, lfw_tgz, tgz_md5, tmp_path):
    server = http_server(lfw_tgz.parent, drop_after=DROP_AFTER)
    dest = fetch(f"{server.url}/{lfw_tgz.name}", tmp_path / "lfw.tgz", f"md5:{tgz_md5}", progress=False)
    assert md5(dest) == tgz_md5
    assert [header for _, header in server.requests] == [None, f"bytes={DROP_AFTER}-"]


def test_server_ignoring_range_restarts(http_server, lfw_tgz, tgz_md5, tmp_path):
    server = http_server(lfw_tgz.parent, drop_after=DROP_AFTER, ignore_range=True)
    dest = fetch(f"{server.url}/{lfw_tgz.name}", tmp_path / "lfw.tgz", f"md5:{tgz_md5}", progress=False)
    assert md5(dest) == tgz_md5 and len(server.requests) == 2


def test_existing_partial_file_is_resumed(http_server, lfw_tgz, tgz_md5, tmp_path):
    server = http_server(lfw_tgz.parent)
    (tmp_path / "lfw.tgz.part").write_bytes(lfw_tgz.read_bytes()[:DROP_AFTER])
    dest = fetch(f"{server.url}/{lfw_tgz.name}", tmp_path / "lfw.tgz", f"md5:{tgz_md5}", progress=False)
    assert md5(dest) == tgz_md5 and server.requests[0][1] == f"bytes={DROP_AFTER}-"


def test_wrong_checksum_leaves_nothing(http_server, lfw_tgz, tgz_md5, tmp_path):
    server = http_server(lfw_tgz.parent)
    url, wrong = f"{server.url}/{lfw_tgz.name}", "0" * 32
    with pytest.raises(DataError) as error:
        fetch(url, tmp_path / "lfw.tgz", f"md5:{wrong}", progress=False)
    assert url in str(error.value) and wrong in str(error.value) and tgz_md5 in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_verified_existing_file_is_reused(http_server, lfw_tgz, tgz_md5, tmp_path):
    server = http_server(lfw_tgz.parent)
    dest = tmp_path / "lfw.tgz"
    dest.symlink_to(lfw_tgz)
    assert fetch(f"{server.url}/{lfw_tgz.name}", dest, f"md5:{tgz_md5}", progress=False) == dest
    assert server.requests == []


def test_missing_url_and_bad_checksum_are_user_errors(http_server, lfw_tgz, tmp_path):
    server = http_server(lfw_tgz.parent)
    with pytest.raises(DataError, match="HTTP 404") as error:
        fetch(f"{server.url}/nothing.tgz", tmp_path / "x.tgz", None, progress=False)
    assert f"{server.url}/nothing.tgz" in str(error.value)
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/lfw.tgz"
    with pytest.raises(DataError, match=f"cannot download {closed}: .*refused"):
        fetch(closed, tmp_path / "x.tgz", None, progress=False)
    with pytest.raises(ConfigError, match="md5:<32 hex>"):
        fetch(f"{server.url}/{lfw_tgz.name}", tmp_path / "x.tgz", "md5:123", progress=False)


def test_prepare_from_url(http_server, lfw_members, make_tgz, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    tgz = make_tgz(served / "small.tgz", lfw_members)
    server = http_server(served)
    url, out = f"{server.url}/small.tgz", tmp_path / "out"
    manifest = prepare(url, out, checksum=f"md5:{md5(tgz)}", train_shards=4, val_shards=1, val_fraction=0.2)
    assert sum(split["count"] for split in manifest["splits"].values()) == len(lfw_members)
    assert manifest["source"]["path_or_url"] == url
    assert manifest["source"]["sha256"] == hashlib.sha256(tgz.read_bytes()).hexdigest()
    assert md5(out / "download" / "small.tgz") == md5(tgz)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    again = prepare(url, out, checksum=f"md5:{md5(tgz)}", train_shards=4, val_shards=1, val_fraction=0.2)
    assert again == manifest and len(server.requests) == 1


def test_stale_partial_file_is_replaced(http_server, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "small.bin").write_bytes(b"fresh bytes")
    (tmp_path / "small.bin.part").write_bytes(b"a longer stale partial download")
    server = http_server(served)
    dest = fetch(f"{server.url}/small.bin", tmp_path / "small.bin", None, progress=False)
    assert dest.read_bytes() == b"fresh bytes" and [r for _, r in server.requests] == ["bytes=31-", None]
