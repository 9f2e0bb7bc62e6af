"""The LPIPS download (through torch.hub's loader, into its cache) and conversion against a 127.0.0.1 server
serving real files.

Heads: the official LPIPS v0.1 files shipped in the PyPI ``lpips`` package. Trunk: no torchvision .pth is
available offline, so the AlexNet ``features.*`` tensors of ``../shared/weights/lpips_alexnet.safetensors``
(torchvision's ImageNet weights) are saved with ``torch.save`` under a torchvision-style name carrying their own
SHA-256 prefix.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import lpips
import pytest
import torch
from safetensors.torch import load_file

from vaeforge.cli import main as cli_main
from vaeforge.errors import DataError
from vaeforge.models.lpips_weights import download
from vaeforge.models.lpips import ENV_WEIGHTS, find_lpips_weights

OFFICIAL_HEADS = Path(lpips.__file__).parent / "weights" / "v0.1"
OUT_NAME = "lpips_alexnet.safetensors"


def sha256(path: Path) -> str:
    """The SHA-256 of a file, computed independently of the code under test."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def named_by_hash(path: Path, stem: str) -> Path:
    """Rename ``path`` torchvision-style, ``<stem>-<first 8 hex of its SHA-256>.pth``."""
    return path.rename(path.with_name(f"{stem}-{sha256(path)[:8]}.pth"))


@pytest.fixture()
def shared_alex(shared_dir: Path) -> Path:
    return shared_dir / "weights" / OUT_NAME


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty vaeforge cache under tmp_path, an empty torch.hub cache ($TORCH_HOME/hub), and no
    $VAEFORGE_LPIPS_WEIGHTS."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    return tmp_path / "xdg" / "vaeforge"


def hub_files() -> list[str]:
    """The names in torch.hub's checkpoint cache (where torchvision keeps its downloads too)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture()
def www(tmp_path: Path, shared_alex: Path) -> Path:
    """A server root: ``trunk/alexnet-test-<sha8>.pth`` and the official ``heads/alex.pth``."""
    (tmp_path / "www" / "trunk").mkdir(parents=True)
    (tmp_path / "www" / "heads").mkdir()
    features = {k: v for k, v in load_file(str(shared_alex)).items() if k.startswith("features.")}
    torch.save(features, tmp_path / "www" / "trunk" / "alexnet.pth")
    named_by_hash(tmp_path / "www" / "trunk" / "alexnet.pth", "alexnet-test")
    shutil.copy(OFFICIAL_HEADS / "alex.pth", tmp_path / "www" / "heads" / "alex.pth")
    return tmp_path / "www"


def trunk_file(www: Path) -> Path:
    return next((www / "trunk").glob("alexnet-*.pth"))


def assert_same_tensors(path: Path, reference: Path) -> None:
    ours, theirs = load_file(str(path)), load_file(str(reference))
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


def assert_no_output(cache: Path) -> None:
    assert not (cache / OUT_NAME).exists()
    assert not list(cache.glob("*.safetensors*"))


def test_missing_weights_error_names_the_download_command(cache):
    with pytest.raises(DataError, match=r"`vaeforge lpips net=alex` downloads .* `trunk=<file> head=<file>`"):
        find_lpips_weights("alex")


def test_cli_downloads_into_torch_hub_s_cache_and_converts_to_the_shared_layout(http_server, www, cache,
                                                                                shared_alex, capsys):
    server = http_server(www)
    name = trunk_file(www).name
    args = ["lpips", "net=alex", f"trunk_base={server.url}/trunk", f"head_base={server.url}/heads",
            f"trunk_name={name}", "progress=false"]
    cli_main(args)
    out = cache / OUT_NAME
    assert f"wrote {out}" in capsys.readouterr().out
    assert_same_tensors(out, shared_alex)
    assert find_lpips_weights("alex") == out
    assert [path for path, _ in server.requests] == ["/heads/alex.pth", f"/trunk/{name}"]
    assert hub_files() == sorted([name, "lpips_v0.1_alex-df73285e.pth"])  # torch.hub's cache, as downloaded
    head = Path(torch.hub.get_dir()) / "checkpoints" / "lpips_v0.1_alex-df73285e.pth"
    assert sha256(head) == sha256(OFFICIAL_HEADS / "alex.pth")
    out.unlink()
    cli_main(args)  # converted again from the cache: nothing downloaded twice
    assert_same_tensors(out, shared_alex)
    assert len(server.requests) == 2
    head.write_bytes(head.read_bytes()[:-1])  # a cache damaged after its download is checked again
    with pytest.raises(DataError, match=rf"checksum mismatch for {head} \(torch.hub's cached copy .*delete it"):
        download("alex", trunk_base=f"{server.url}/trunk", head_base=f"{server.url}/heads", trunk_name=name,
                 progress=False)


def test_wrong_head_checksum_leaves_nothing(http_server, www, cache):
    shutil.copy(OFFICIAL_HEADS / "vgg.pth", www / "heads" / "alex.pth")  # a real head, but not alex's
    server = http_server(www)
    with pytest.raises(DataError, match=rf"checksum mismatch for {server.url}/heads/alex.pth: .*expected \"df73"):
        download("alex", trunk_base=f"{server.url}/trunk", head_base=f"{server.url}/heads",
                 trunk_name=trunk_file(www).name, progress=False)
    assert_no_output(cache)
    assert hub_files() == []  # torch.hub checks before the file appears
    assert all(not path.startswith("/trunk/") for path, _ in server.requests)  # failed before the big download


def test_trunk_prefix_mismatch_leaves_nothing(http_server, www, cache):
    wrong = trunk_file(www).rename(www / "trunk" / "alexnet-test-00000000.pth")
    server = http_server(www)
    with pytest.raises(DataError, match=rf"checksum mismatch for {server.url}/trunk/{wrong.name}: .*00000000"):
        download("alex", trunk_base=f"{server.url}/trunk", head_base=f"{server.url}/heads", trunk_name=wrong.name,
                 progress=False)
    assert_no_output(cache)
    assert hub_files() == ["lpips_v0.1_alex-df73285e.pth"]  # the head passed its check; the trunk left nothing


class RunsCode:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_crafted_pickle_trunk_is_refused_without_running_code(http_server, www, cache, tmp_path):
    marker = tmp_path / "code_ran"
    trunk_file(www).unlink()
    crafted = www / "trunk" / "alexnet.pth"
    torch.save({"features.0.weight": RunsCode(marker)}, crafted)
    crafted = named_by_hash(crafted, "alexnet-test")  # its prefix matches: only weights_only stands in the way
    assert "builtins.exec" in torch.serialization.get_unsafe_globals_in_checkpoint(crafted)
    server = http_server(www)
    with pytest.raises(DataError, match=rf"{server.url}/trunk/{crafted.name}: not a weights-only .*refused"):
        download("alex", trunk_base=f"{server.url}/trunk", head_base=f"{server.url}/heads", trunk_name=crafted.name,
                 progress=False)
    assert not marker.exists()
    assert_no_output(cache)
    assert crafted.name not in hub_files()  # refused although its prefix matched: deleted from the cache


def test_offline_local_files_are_converted(www, cache, shared_alex, tmp_path):
    trunk = trunk_file(www)
    out = download("alex", trunk=str(trunk), head=str(OFFICIAL_HEADS / "alex.pth"), trunk_name=trunk.name,
                   trunk_base="http://127.0.0.1:9/unused", head_base="http://127.0.0.1:9/unused", progress=False)
    assert out == cache / OUT_NAME
    assert_same_tensors(out, shared_alex)
    out.unlink()
    with pytest.raises(DataError, match=r"vgg\.pth: expected a SHA-256 starting with df73"):
        download("alex", trunk=str(trunk), head=str(OFFICIAL_HEADS / "vgg.pth"), trunk_name=trunk.name)
    assert_no_output(cache)
    assert trunk.is_file() and (OFFICIAL_HEADS / "vgg.pth").is_file()  # a user's own files are never deleted
    assert hub_files() == []  # local files are used where they are
