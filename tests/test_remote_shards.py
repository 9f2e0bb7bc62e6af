"""``data.shards`` from anywhere: a folder, the URL of one, a shard pattern (over http or in a ``pipe:`` command),
the manifest read beside the shards. Training from any of them sees exactly the samples it sees from the folder;
a connection dropped mid-shard is read again, or named in one line, and never trains on less."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import TINY, task, train
from vaeforge.data.manifest import read_manifest
from vaeforge.data.sources import parse
from vaeforge.errors import DataError

STEPS = 4
ARGS = [*TINY, f"trainer.max_steps={STEPS}", "trainer.audit_samples=true", "trainer.val_every=2",
        "trainer.image_every=0", "trainer.checkpoint_every=2", "data.val_max_batches=1"]


@pytest.mark.parametrize("shards, manifest, names", [
    ("data/lfw64", "data/lfw64/manifest.json", ()),
    ("https://host/lfw64/", "https://host/lfw64/manifest.json", ()),
    ("http://host/lfw64/train-{000000..000002}.tar", "http://host/lfw64/manifest.json",
     ("train-000000.tar", "train-000001.tar", "train-000002.tar")),
    ("pipe:cat /d/{train-000003,val-000000}.tar", "pipe:cat /d/manifest.json", ("train-000003.tar", "val-000000.tar")),
    ("pipe:curl -s http://h/x/train-000001.tar | cat", "pipe:curl -s http://h/x/manifest.json | cat",
     ("train-000001.tar",)),
])
def test_each_form_finds_its_manifest_beside_its_shards(shards, manifest, names):
    source = parse(shards)
    assert source.where("manifest.json") == manifest and source.names == names


def test_a_pipe_command_names_its_shards():
    with pytest.raises(DataError, match=r"a pipe: command names its shards by a file name ending in \.tar"):
        parse("pipe:cat /data/lfw64")


def trained(run_dir: Path) -> dict[int, str]:
    """The keys each step trained on (the audit's last word on a step wins: a resume replays from a checkpoint)."""
    lines = (run_dir / "audit" / "samples_rank0.txt").read_text().splitlines()
    return {int(line.split()[0]): " ".join(line.split()[2:]) for line in lines}


def all_train(base: str, lfw64: Path) -> str:
    """A pattern naming every train shard of the prepared data under ``base``."""
    last = len(read_manifest(lfw64)["splits"]["train"]["shards"]) - 1
    return f"{base}/train-{{000000..{last:06d}}}.tar"


@pytest.fixture(scope="module")
def reference(lfw64: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """What a run trains on from the local folder."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(*ARGS, f"data.shards={lfw64}", f"run_dir={run_dir}")
    return trained(run_dir)


@pytest.fixture(scope="module")
def server(lfw64, http_server):
    return http_server(lfw64)


def test_a_url_trains_on_the_folders_samples_resumes_and_serves_tasks(lfw64, server, reference, tmp_path):
    run_dir = tmp_path / "run"
    train(*ARGS, f"data.shards={server.url}", f"run_dir={run_dir}", "trainer.max_steps=2")
    train(f"run_dir={run_dir}", "resume=true", f"trainer.max_steps={STEPS}")  # the source from config.yaml
    assert trained(run_dir) == reference and len(reference) == STEPS
    assert json.loads((run_dir / "run.json").read_text())["data"] == {
        "shards": server.url, "manifest": f"{server.url}/manifest.json"}
    assert json.loads((run_dir / "manifest.json").read_text()) == read_manifest(lfw64)
    task("task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=4")
    assert len(list((run_dir / "tasks" / "reconstruct").glob("*.png"))) >= 4


def test_a_url_pattern_trains_on_the_same_samples(lfw64, server, reference, tmp_path):
    train(*ARGS, f"data.shards={all_train(server.url, lfw64)}", f"run_dir={tmp_path / 'run'}")
    assert trained(tmp_path / "run") == reference


def test_a_pattern_selects_shards_and_keeps_the_other_split_whole(lfw64, server, tmp_path):
    whole = read_manifest(lfw64)["splits"]
    some = read_manifest(f"{server.url}/train-{{000002..000004}}.tar")["splits"]
    assert [s["name"] for s in some["train"]["shards"]] == ["train-000002.tar", "train-000003.tar", "train-000004.tar"]
    assert some["train"]["count"] == sum(s["count"] for s in whole["train"]["shards"][2:5])
    assert some["val"] == whole["val"]
    elsewhere = tmp_path / "lfw64-manifest.json"  # data.manifest: a manifest not beside the shards
    elsewhere.write_bytes((lfw64 / "manifest.json").read_bytes())
    one = read_manifest(f"pipe:cat {lfw64}/train-000001.tar", str(elsewhere))["splits"]["train"]
    assert [s["name"] for s in one["shards"]] == ["train-000001.tar"] and one["count"] == whole["train"]["shards"][1]["count"]
    with pytest.raises(DataError, match=r"shard\(s\) train-999999.tar of data.shards are not in http://"):
        read_manifest(f"{server.url}/train-999999.tar")


def test_a_pipe_command_trains_on_the_same_samples_and_a_run_folder_never_runs_it(lfw64, reference, tmp_path):
    shards, run_dir = all_train(f"pipe:cat {lfw64}", lfw64), tmp_path / "run"
    train(*ARGS, f"data.shards={shards}", f"run_dir={run_dir}")
    assert trained(run_dir) == reference
    refused = task("task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=2", check=False)
    assert refused.returncode == 2 and "a run folder's commands are not run" in refused.stderr
    task("task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=2", f"shards={shards}")
    resumed = train(f"run_dir={run_dir}", "resume=true", f"trainer.max_steps={STEPS + 1}", check=False)
    assert resumed.returncode == 2 and "pass data.shards=... again to run it" in resumed.stderr


def test_a_connection_dropped_mid_shard_is_read_again(lfw64, http_server, reference, tmp_path):
    half = (lfw64 / "train-000000.tar").stat().st_size // 2
    server = http_server(lfw64, drop_after=half, drop_path="/train-")
    proc = train(*ARGS, f"data.shards={server.url}", f"run_dir={tmp_path / 'run'}", "data.on_error=raise")
    assert trained(tmp_path / "run") == reference
    cut = next(path for path, _ in server.requests if "/train-" in path)
    assert [path for path, _ in server.requests].count(cut) == 2
    assert f"{server.url}{cut}: curl exit 18" in proc.stderr and "reading it again (attempt 2 of 3)" in proc.stderr


def test_a_connection_dropped_every_time_is_named_and_nothing_is_trained(lfw64, http_server, tmp_path):
    half = (lfw64 / "train-000000.tar").stat().st_size // 2
    server = http_server(lfw64, drop_after=half, drop_path="/train-", drops=10**6)
    run_dir = tmp_path / "run"
    proc = train(*ARGS, f"data.shards={server.url}", f"run_dir={run_dir}", "data.on_error=raise", check=False)
    cut = next(path for path, _ in server.requests if "/train-" in path)
    error = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and error == (f"vaeforge: error: shard {server.url}{cut}: curl exit 18 "
                                              "(the connection closed mid-transfer) (3 attempts)")
    assert [path for path, _ in server.requests].count(cut) == 3
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
