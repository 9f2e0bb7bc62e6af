"""Experiment tracking through Accelerate's trackers (issue 21 item 2): a run trained in two sessions with
``trainer.log_with=[tensorboard,mlflow,wandb]`` gives a local MLflow store (SQLite, no server) and W&B (offline: its
run files, read back record by record) the same scalars as TensorBoard, at the same steps, each in one run
continued by the resume, with the config as its parameters, in ``trainer.tracker_project``; a failed training ends
their runs as failed; TensorBoard's HParams tab (asked of a real TensorBoard on 127.0.0.1) shows the config beside
the final metrics."""
from __future__ import annotations

import json
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from wandb.proto import wandb_internal_pb2

from helpers import BIN, TINY, env, free_port, train
from vaeforge.train.tracking import flat_config

STEPS = (5, 10)  # the first session trains to 5 steps, the resume to 10; scalars every 5, validation every 5


PROJECT = "faces"
TRACKERS = ("trainer.log_with=[tensorboard,mlflow,wandb]", f"trainer.tracker_project={PROJECT}")


def tracker_env(root: Path) -> dict[str, str]:
    """MLflow in a SQLite file, W&B offline (its run files under ``root``): nothing leaves the machine."""
    return env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", WANDB_MODE="offline", WANDB_DIR=str(root),
               WANDB_SILENT="true")


@pytest.fixture(scope="module")
def tracked(lfw64: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, trackers' folder) of a run trained in two sessions, logging to TensorBoard, MLflow and W&B."""
    root = tmp_path_factory.mktemp("tracked")
    run_dir = root / "run"
    for steps in STEPS:
        train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", f"trainer.max_steps={steps}", "resume=true",
              "trainer.val_every=5", "trainer.image_every=0", *TRACKERS, env=tracker_env(root))
    return run_dir, root


def mlflow_run(root: Path, run_dir: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name(PROJECT).experiment_id])
    assert run.info.run_name == run_dir.name
    return client, run


def wandb_records(root: Path, run_id: str) -> list[wandb_internal_pb2.Record]:
    """The records of every offline session of W&B run ``run_id``, in order. A run file is W&B's 7-byte header,
    then a LevelDB log: 32 KiB blocks of chunks (crc32c, length, type: 1 whole, 2 first, 3 middle, 4 last)."""
    records = []
    for path in sorted(root.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        raw, pos, chunks = path.read_bytes(), 7, b""
        while pos + 7 <= len(raw):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
            if kind == 0:
                break
            chunks, pos = chunks + raw[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):
                records.append(wandb_internal_pb2.Record.FromString(chunks))
                chunks = b""
    return records


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_mlflow_gets_the_scalars_tensorboard_gets_in_one_run_continued_by_the_resume(tracked):
    run_dir, root = tracked
    client, run = mlflow_run(root, run_dir)
    assert run.info.status == "FINISHED"
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"] == run.info.run_id

    scalars = tensorboard_scalars(run_dir)
    assert {"train/loss", "train/kl/beta", "train/lr", "val/loss", "val/psnr", "perf/images_per_sec"} <= set(scalars)
    assert set(run.data.metrics) == set(scalars)
    for tag, logged in scalars.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert [step for step, _ in history] == [step for step, _ in logged] == [5, 10], tag
        assert [value for _, value in history] == pytest.approx([value for _, value in logged], rel=1e-6), tag

    # the parameters of the session that started the MLflow run: the config with its max_steps
    config = flat_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    expected = {key: json.dumps(value) if isinstance(value, list) else str(value) for key, value in config.items()}
    assert run.data.params == {**expected, "trainer.max_steps": str(STEPS[0])}


def test_wandb_gets_the_same_scalars_in_one_run_continued_by_the_resume(tracked):
    run_dir, root = tracked
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    records = wandb_records(root, run_id)
    kinds = [r.WhichOneof("record_type") for r in records]
    starts = [r.run for r in records if r.HasField("run")]
    assert [(s.run_id, s.project, s.resume) for s in starts] == [(run_id, PROJECT, False), (run_id, PROJECT, True)]
    assert starts[0].display_name == run_dir.name  # the resume continued the run it named
    assert kinds.count("exit") == 2 and all(r.exit.exit_code == 0 for r in records if r.HasField("exit"))

    history: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.HasField("history"):
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for tag, value in items.items():
                if not tag.startswith("_"):
                    history.setdefault(tag, []).append((items["_step"], value))
    scalars = tensorboard_scalars(run_dir)
    assert set(history) == set(scalars)
    for tag, logged in scalars.items():
        assert [step for step, _ in history[tag]] == [step for step, _ in logged], tag
        assert [v for _, v in history[tag]] == pytest.approx([v for _, v in logged], rel=1e-6), tag

    # the config of the session that started the W&B run
    given = {u.key or "/".join(u.nested_key): json.loads(u.value_json)
             for r in records if r.HasField("config") for u in r.config.update}
    config = flat_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert {**config, "trainer.max_steps": STEPS[0]} == {k: v for k, v in given.items() if not k.startswith("_")}


def test_a_failed_training_ends_its_tracker_runs_as_failed(lfw64, tmp_path):
    (tmp_path / "nan_loss.py").write_text(
        "from vaeforge.api import LossTerm, LossValue, register_loss\n"
        "@register_loss('always_nan')\n"
        "class AlwaysNaN(LossTerm):\n"
        "    def forward(self, out, target, step):\n        return LossValue(out.z.mean() * float('nan'))\n"
    )
    run_dir = tmp_path / "run"
    failed = train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "plugins=[nan_loss]", *TRACKERS,
                   "losses.broken.name=always_nan", "trainer.max_nonfinite=1", "trainer.max_steps=5", check=False,
                   env={**tracker_env(tmp_path), "PYTHONPATH": str(tmp_path)})
    assert failed.returncode == 2 and "1 consecutive non-finite updates" in failed.stderr, failed.stderr
    _, run = mlflow_run(tmp_path, run_dir)
    assert run.info.status == "FAILED"
    [end] = [r.exit for r in wandb_records(tmp_path, json.loads((run_dir / "trackers.json").read_text())["wandb"])
             if r.HasField("exit")]
    assert end.exit_code == 1


def hparams_plugin_data(run_dir: Path) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in events.PluginTagToContent("hparams").items()}


def post(url: str, request: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(request).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return json.loads(answer.read())


def test_tensorboard_hparams_show_the_config_beside_the_final_metrics(tracked):
    run_dir, _ = tracked
    data = hparams_plugin_data(run_dir)
    assert set(data) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}  # metrics: every scalar
    hparams = data["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["model.latent_dim"].number_value == 16
    assert hparams["trainer.log_with"].string_value == '["tensorboard", "mlflow", "wandb"]'
    assert data["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS

    port = free_port()
    server = subprocess.Popen([str(BIN / "tensorboard"), "--logdir", str(run_dir), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base, deadline = f"http://127.0.0.1:{port}/data/plugin/hparams", time.monotonic() + 60
        while True:
            try:
                experiment = post(f"{base}/experiment", {"experimentName": ""})
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not answer"
                time.sleep(0.5)
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"val/loss", "val/psnr", "train/loss"} <= metrics
        columns = [{"metric": {"tag": tag, "group": ""}} for tag in ("val/loss", "val/psnr")]
        groups = post(f"{base}/session_groups", {"experimentName": "", "colParams": columns, "startIndex": 0,
                                                 "sliceSize": 10, "allowedStatuses": ["STATUS_SUCCESS"]})
    finally:
        server.terminate()
        server.wait(timeout=30)
    [group] = groups["sessionGroups"]
    assert group["name"] == "tb" and group["hparams"]["model.latent_dim"] == 16
    shown = {m["name"]["tag"]: (m["trainingStep"], m["value"]) for m in group["metricValues"]}
    scalars = tensorboard_scalars(run_dir)
    for tag in ("val/loss", "val/psnr"):
        assert shown[tag] == (STEPS[-1], pytest.approx(scalars[tag][-1][1], rel=1e-6))
