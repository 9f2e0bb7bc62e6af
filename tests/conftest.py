"""Shared fixtures: the real LFW data beside the repo, a prepared 64x64 copy, small archives, a local HTTP server;
and the two tiers: a test using the real data is marked ``integration``, the rest is the unit tier."""
from __future__ import annotations

import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from filelock import FileLock

from vaeforge.data.build import prepare
from vaeforge.models.lpips import ENV_WEIGHTS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVTRAIN_TGZ = "lfw-deepfunneled-devtrain.tgz"
SMALL_IMAGES = 40  # the first images of the real archive, for fast small-archive tests

pytest_plugins = ["fault_tally"]


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[Path]:
    """The shared real-data folder (``../shared`` or ``$VAEFORGE_SHARED``); its absence is a failure, not a skip.

    While it is in use, ``VAEFORGE_LPIPS_WEIGHTS`` points at its LPIPS weights (unless already set), as a user
    would point it: the shipped recipes train with an LPIPS term (tests that need no weights delete it with
    monkeypatch). The unit tier uses no shared data, so it runs without either."""
    path = Path(os.environ.get("VAEFORGE_SHARED", REPO_ROOT.parent / "shared"))
    if not (path / "data" / "lfw" / DEVTRAIN_TGZ).is_file():
        pytest.fail(f"real LFW data not found under {path} (set VAEFORGE_SHARED to the shared folder)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_WEIGHTS, os.environ.get(ENV_WEIGHTS, str(path / "weights")))
        yield path


# The test files that take longest (CI's --durations, summed per file), longest first. scripts/test.sh hands
# whole files to its two workers in collection order (--dist loadfile --no-loadscope-reorder): starting with
# the longest keeps one worker from running a long file alone at the end. The rest keep pytest's order.
LONGEST_FIRST = ("test_train.py", "test_distributed.py", "test_speed.py", "test_slurm.py", "test_optimizer_groups.py",
                 "test_tasks.py", "faults/test_disk_full.py", "test_adversarial.py", "faults/test_kill_resume.py",
                 "test_report.py", "test_remote_shards.py", "test_export.py", "test_prepare.py")


def _file_rank(item: pytest.Item) -> int:
    name = item.path.relative_to(Path(__file__).parent).as_posix()
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the shared data (through any fixture) ``integration``: the unit tier,
    ``-m "not integration"``, is then exactly what runs without ``../shared``. Order the files longest first."""
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
    items.sort(key=_file_rank)  # stable: a file's tests keep their order


@pytest.fixture(scope="session")
def lpips_weights(shared_dir: Path) -> Path:
    """The folder with the shared LPIPS weights (``lpips_alexnet.safetensors``, ``lpips_vgg16.safetensors``)."""
    return shared_dir / "weights"


@pytest.fixture(scope="session")
def labels_dir(shared_dir: Path) -> Path:
    """The folder with the LFW archive and the label files (attributes, emotions, gender lists)."""
    return shared_dir / "data" / "lfw"


@pytest.fixture(scope="session")
def lfw_tgz(labels_dir: Path) -> Path:
    """The real View 1 devtrain archive: 9,525 images of 4,038 people, official layout."""
    return labels_dir / DEVTRAIN_TGZ


@pytest.fixture(scope="session")
def lfw64(lfw_tgz: Path, labels_dir: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The real devtrain archive prepared at 64x64 with every label file, once per session: xdist's workers share
    one read-only copy (the first to ask prepares it, under a lock). Returns the output folder."""
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the folder all workers' temporary folders are in
    out = root / "lfw64" / "shards"
    with FileLock(str(root / "lfw64.lock")):
        if not (out / "manifest.json").is_file():  # prepare writes the manifest last
            prepare(
                lfw_tgz,
                out,
                image_size=64,
                attributes=labels_dir / "lfw_attributes.txt",
                emotions=labels_dir / "lfw_emotions.csv",
                gender_male=labels_dir / "lfw_gender_male.txt",
                gender_female=labels_dir / "lfw_gender_female.txt",
            )
    return out


@pytest.fixture(scope="session")
def trained_run(lfw64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny lfw_unet trained TRAINED_STEPS steps on the real shards, shared by the task, prior and plugin tests
    (they write only task outputs and fitted samplers into it); tests that damage or resume it take a copy."""
    from helpers import TINY, TRAINED_STEPS, train

    run_dir = tmp_path_factory.mktemp("trained_run") / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", f"trainer.max_steps={TRAINED_STEPS}")
    return run_dir


@pytest.fixture()
def trained_copy(trained_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the session's trained run, to damage or train on without training one again."""
    return Path(shutil.copytree(trained_run, tmp_path / "trained_copy"))


@pytest.fixture(scope="session")
def lfw_members(lfw_tgz: Path) -> list[tuple[str, bytes]]:
    """(member name, JPEG bytes) of the first SMALL_IMAGES images of the real archive."""
    members = []
    with tarfile.open(lfw_tgz, "r|gz") as tar:
        for member in tar:
            if member.isfile():
                members.append((member.name, tar.extractfile(member).read()))  # type: ignore[union-attr]
            if len(members) == SMALL_IMAGES:
                break
    return members


@pytest.fixture(scope="session")
def make_tgz() -> Callable[[Path, list[tuple[str, bytes]]], Path]:
    """A factory writing (member name, bytes) pairs into a gzipped tar at a path."""

    def write(path: Path, members: list[tuple[str, bytes]]) -> Path:
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    return write


@dataclass
class LocalServer:
    """A running local server: its base URL and the (path, Range header) of every request it got."""

    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``root``; may ignore Range headers, or cut the first ``drops`` responses to a path containing
    ``drop_path`` after ``drop_after`` bytes."""

    daemon_threads = True

    def __init__(self, root: Path, drop_after: int | None, ignore_range: bool, drop_path: str, drops: int) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root, self.drop_after, self.ignore_range = root, drop_after, ignore_range
        self.drop_path, self.drops = drop_path, drops
        self.log = LocalServer(f"http://127.0.0.1:{self.server_address[1]}")

    def cut_at(self, path: str) -> int | None:
        """Where to cut the response to ``path`` (None: send it whole)."""
        if self.drop_after is None or self.drop_path not in path or self.drops <= 0:
            return None
        self.drops -= 1
        return self.drop_after


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET of a file under the server root, with ``Range: bytes=N-`` answered by 206 Partial Content."""

    server: _Server

    def do_GET(self) -> None:
        """Answer 200/206 with the file's bytes (maybe cut short), 404 or 416."""
        log = self.server.log
        log.requests.append((self.path, self.headers.get("Range")))
        relative = Path(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/"))
        file = self.server.root / relative
        if ".." in relative.parts or not file.is_file():
            self.send_error(404)
            return
        size = file.stat().st_size
        start = self._range_start()
        if start >= size and start > 0:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        limit = self.server.cut_at(self.path)
        self._send(file, start, size - start if limit is None else min(limit, size - start))

    def _range_start(self) -> int:
        """The first byte asked for by a ``bytes=N-`` Range header (0 if none, or if ranges are ignored)."""
        header = self.headers.get("Range")
        if self.server.ignore_range or not header or not header.startswith("bytes="):
            return 0
        return int(header[len("bytes="):].split("-", 1)[0])

    def _send(self, file: Path, start: int, count: int) -> None:
        """Write ``count`` bytes of ``file`` from ``start``; a cut response then closes the connection."""
        with open(file, "rb") as f:
            f.seek(start)
            while count > 0:
                chunk = f.read(min(count, 1 << 16))
                self.wfile.write(chunk)
                count -= len(chunk)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture(scope="session")
def http_server() -> Iterator[Callable[..., LocalServer]]:
    """A factory: ``http_server(root, drop_after=None, ignore_range=False, drop_path="", drops=1)`` serves ``root``
    on 127.0.0.1."""
    servers: list[_Server] = []

    def start(root: Path, drop_after: int | None = None, ignore_range: bool = False, drop_path: str = "",
              drops: int = 1) -> LocalServer:
        server = _Server(Path(root), drop_after, ignore_range, drop_path, drops)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.log

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by the test setup when it is missing (root, package registry only)."""
    found = shutil.which("chromium")
    if found:
        return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    return shutil.which("chromium") or pytest.fail("chromium did not install")
