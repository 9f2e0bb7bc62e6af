"""Experiment tracking through Accelerate's trackers (issue 21 item 2): a run trained in two sessions with
``trainer.log_with=[tensorboard,mlflow]`` and a local MLflow store (SQLite, no server) gives MLflow the same scalars
as TensorBoard, at the same steps, in one MLflow run continued by the resume, with the config as its parameters;
TensorBoard's HParams tab (asked of a real TensorBoard on 127.0.0.1) shows the config beside the final metrics."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from helpers import BIN, TINY, env, free_port, train
from vaeforge.train.tracking import PROJECT, flat_config

STEPS = (5, 10)  # the first session trains to 5 steps, the resume to 10; scalars every 5, validation every 5


@pytest.fixture(scope="module")
def tracked(lfw64: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(run folder, MLflow tracking URI) of a run trained in two sessions, logging to TensorBoard and MLflow."""
    root = tmp_path_factory.mktemp("tracked")
    run_dir, uri = root / "run", f"sqlite:///{root / 'mlflow.db'}"
    for steps in STEPS:
        train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", f"trainer.max_steps={steps}", "resume=true",
              "trainer.val_every=5", "trainer.image_every=0", "trainer.log_with=[tensorboard,mlflow]",
              env=env(MLFLOW_TRACKING_URI=uri))
    return run_dir, uri


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_mlflow_gets_the_scalars_tensorboard_gets_in_one_run_continued_by_the_resume(tracked):
    run_dir, uri = tracked
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name(PROJECT).experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert json.loads((run_dir / "trackers.json").read_text()) == {"mlflow": run.info.run_id}

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
    assert hparams["trainer.log_with"].string_value == '["tensorboard", "mlflow"]'
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
