"""Training for real on the prepared LFW shards: 1 and 2 processes, checkpoints, resume, TensorBoard."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import PY, TINY, TINY_RUN, TRAINED_STEPS, env, kill_group, launch, train, wait_for
from vaeforge.runs.checkpoints import latest_checkpoint

CKPT = "checkpoints"


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / CKPT / f"step_{step:08d}" / "model.safetensors"))


def test_one_process_trains_checkpoints_and_logs_to_tensorboard(lfw64, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=40",
                 "trainer.keep_checkpoints=2")
    assert "TensorBoard: tensorboard --logdir" in proc.stdout + proc.stderr
    assert sorted(p.name for p in (run_dir / CKPT).iterdir()) == ["step_00000030", "step_00000040"]
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 1
    assert "latent_dim: 16" in (run_dir / "config.yaml").read_text()
    tb = events(run_dir)
    scalars = set(tb.Tags()["scalars"])
    assert {"train/loss", "train/recon", "train/kl", "train/kl/beta", "train/lr", "train/grad_norm",
            "train/active_units", "perf/images_per_sec", "perf/data_wait_fraction", "val/loss", "val/psnr",
            "val/active_units"} <= scalars
    assert [e.step for e in tb.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [e.step for e in tb.Scalars("val/loss")] == [20, 40]
    betas = [e.value for e in tb.Scalars("train/kl/beta")]
    assert betas == sorted(betas) and 0 < betas[0] < betas[-1] <= 1.0  # KL warm-up
    assert {"images/reconstruction", "images/samples"} <= set(tb.Tags()["images"])
    grid = tb.Images("images/samples")[-1]
    assert grid.width > 64 and grid.height > 64
    assert {"latent/mu", "latent/logvar", "latent/kl_per_dim", "val/kl_per_dim"} <= set(tb.Tags()["histograms"])


def test_two_processes_keep_identical_weights_and_see_disjoint_samples(lfw64, tmp_path):
    run_dir = tmp_path / "ddp"
    launch(2, "vaeforge.train", *TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=12",
           "trainer.audit_samples=true", "data.num_workers=1")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo" and info["global_batch"] == 32
    digests = {(run_dir / "audit" / f"params_rank{r}.txt").read_text() for r in range(2)}
    assert len(digests) == 1  # bit-identical parameters on both ranks
    seen = []
    for r in range(2):
        lines = (run_dir / "audit" / f"samples_rank{r}.txt").read_text().splitlines()
        assert len(lines) == 12
        seen.append({k for line in lines for k in line.split()[2:]})
    assert len(seen[0]) == len(seen[1]) == 12 * 16 and not seen[0] & seen[1]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "vaeforge.train", *args], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_sigkill_then_resume_continues_to_the_same_weights(lfw64, tmp_path):
    args = [*TINY, f"data.shards={lfw64}", "trainer.checkpoint_every=5", "data.num_workers=1",
            "trainer.val_every=10", "optim.schedule=constant"]
    straight = tmp_path / "straight"
    train(*args, f"run_dir={straight}", "trainer.max_steps=30")

    killed = tmp_path / "killed"
    proc = start([*args, f"run_dir={killed}", "trainer.max_steps=100000"])
    wait_for(lambda: (killed / CKPT / "step_00000015").is_dir(), 300, proc)
    kill_group(proc, signal.SIGKILL)
    done = sorted(p.name for p in (killed / CKPT).iterdir() if not p.name.endswith(".tmp"))
    assert 15 <= int(done[-1].split("_")[1]) < 30

    train(*args, f"run_dir={killed}", "resume=true", "trainer.max_steps=30")
    state = json.loads((killed / CKPT / "step_00000030" / "state.json").read_text())
    assert state["step"] == 30 and state["images_seen"] == 30 * 16
    assert not list((killed / CKPT).glob("*.tmp"))
    a, b = weights(straight, 30), weights(killed, 30)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert max(e.step for e in events(killed).Scalars("train/loss")) == 30


def test_sigterm_checkpoints_and_a_busy_run_dir_is_refused(lfw64, tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=100000"]
    proc = start(args)
    wait_for(lambda: (run_dir / CKPT / "step_00000010").is_dir(), 300, proc)
    second = train(*args, "resume=true", check=False)
    assert second.returncode == 2 and "is in use by another training" in second.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    last = sorted((run_dir / CKPT).iterdir())[-1]
    assert int(last.name.split("_")[1]) > 10  # a checkpoint at the step where it stopped


def test_damaged_or_foreign_checkpoints_are_named(lfw64, trained_copy):
    run_dir, more = trained_copy, f"trainer.max_steps={TRAINED_STEPS + 1}"
    foreign = train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "resume=true", more, "model.latent_dim=8",
                    check=False)
    assert foreign.returncode == 2 and "another architecture" in foreign.stderr
    model = latest_checkpoint(run_dir) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    damaged = train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "resume=true", more, check=False)
    assert damaged.returncode == 2 and f"{model} is damaged" in damaged.stderr
    fresh = train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", check=False)
    assert fresh.returncode == 2 and "already has checkpoints" in fresh.stderr


def test_a_few_hundred_steps_beat_the_mean_face(lfw64, tmp_path):
    """Reconstruction MSE on unseen people must be clearly below predicting the mean training face."""
    import vaeforge
    from vaeforge.data.stream import eval_batches
    from vaeforge.data.manifest import read_manifest, shard_paths

    run_dir = tmp_path / "quality"
    train("recipe=lfw_unet", f"data.shards={lfw64}", f"run_dir={run_dir}", "model.latent_dim=32",
          "model.backbone.args.widths=[16,32,64]", "data.batch_size=32",
          "data.num_workers=1", "trainer.max_steps=200", "trainer.val_every=0", "trainer.image_every=0",
          "trainer.checkpoint_every=0",
          "trainer.progress=false", "optim.lr=3e-3", "losses.kl.args.warmup_steps=100",
          "trainer.channels_last=off", timeout=900)
    manifest = read_manifest(lfw64)
    batches = lambda split: eval_batches(shard_paths(lfw64, manifest, split), 256, 0, 1)  # noqa: E731
    total, n = torch.zeros(3, 64, 64), 0
    for batch in batches("train"):
        total += batch["image"].float().sum(0) / 255.0
        n += batch["image"].shape[0]
    mean_face = total / n
    val = torch.cat([b["image"].float() / 255.0 for b in batches("val")])
    model = vaeforge.load(run_dir)
    assert model.weights == "ema" and model.image_size == 64 and model.latent_dim == 32
    mse_model = float((model.reconstruct(val) - val).square().mean())
    mse_mean = float((mean_face - val).square().mean())
    print(f"val MSE: model {mse_model:.4f}, mean face {mse_mean:.4f}")
    assert mse_model < 0.6 * mse_mean


def test_by_precision_settings_follow_the_precision_the_run_trains_in_and_are_saved_applied(lfw64, tmp_path):
    """The settings of the precision this run resolves to are what it trains and what its folder records; a
    resume and ``vaeforge.load`` build that model, whatever precision they run in."""
    import vaeforge
    from vaeforge.config.yamlfile import read_yaml

    run_dir = tmp_path / "run"
    args = [*TINY_RUN, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.mixed_precision=no",
            "by_precision.no.model.backbone.args.widths=[8,16,24]", "by_precision.bf16.model.latent_dim=4"]
    out = train(*args, "trainer.max_steps=2")
    assert "training in fp32, so by_precision.no: model.backbone.args.widths=[8, 16, 24]" in out.stdout, out.stdout
    saved = read_yaml(run_dir / "config.yaml", "run config")
    assert saved["model"]["backbone"]["args"]["widths"] == [8, 16, 24] and saved["model"]["latent_dim"] == 16
    assert saved["by_precision"] is None
    train(f"run_dir={run_dir}", f"data.shards={lfw64}", "resume=true", "trainer.max_steps=3",
          "trainer.mixed_precision=bf16")  # another precision: the saved architecture, not by_precision.bf16's
    model = vaeforge.load(run_dir)
    assert model.latent_dim == 16 and model.vae.encoder is not None
    assert {p.shape[0] for p in model.vae.parameters() if p.ndim == 4} >= {8, 16, 24}


def test_time_limit_and_gradient_accumulation(lfw64, tmp_path):
    """trainer.max_time stops the run with a checkpoint; grad_accum=2 doubles the images per optimizer step."""
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=100000", "trainer.max_time=6",
          "trainer.grad_accum=2")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["gradient_accumulation_steps"] == 2 and info["global_batch"] == 32
    last = sorted((run_dir / CKPT).iterdir())[-1]
    state = json.loads((last / "state.json").read_text())
    assert 0 < state["step"] < 100000 and last.name == f"step_{state['step']:08d}"
    assert state["images_seen"] == state["step"] * 32


def cosine_lr(seconds: float, budget: float, peak: float = 1e-3, floor: float = 0.1) -> float:
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, seconds / budget))))


def test_time_budget_sets_the_lr_horizon_across_resumes(lfw64, tmp_path):
    """trainer.time_budget: the cosine decay runs over training seconds (not max_steps), counted across resumes."""
    run_dir = tmp_path / "run"
    args = [*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=100000", "optim.lr=1e-3",
            "optim.warmup_steps=0", "optim.min_lr_ratio=0.1", "trainer.val_every=0", "trainer.image_every=0"]

    def logged(after: int = 0) -> list[tuple[float, float]]:
        tb = events(run_dir)
        seconds = {e.step: e.value for e in tb.Scalars("progress/train_seconds")}
        return [(seconds[e.step], e.value) for e in tb.Scalars("train/lr") if e.step > after]

    def last_state() -> dict:
        return json.loads((sorted((run_dir / CKPT).iterdir())[-1] / "state.json").read_text())

    shown = train(*args, "trainer.time_budget=6", "trainer.progress=true", env=env(TQDM_DISABLE="")).stderr
    first = last_state()
    assert 6 <= first["train_seconds"] < 8 and 0 < first["step"] < 100000
    # the bar counts the budget's seconds (not the 100000 steps) and its ETA is the budget's rest from the start
    bars = [tuple(map(int, m)) for m in re.findall(r"(\d+)/6 s \[(\d+):(\d+)<(\d+):(\d+)", shown)]
    assert bars and bars[0][3:] == (0, 6) and bars[-1][0] == 6, shown
    assert all(n + 60 * m + s == 6 for n, _, _, m, s in bars), shown
    assert 60 * bars[-1][1] + bars[-1][2] <= 6 * 1.1 + 1, shown  # the wall time it took: the ETA held (+1: display)
    before = logged()
    assert before[0][1] > 0.95e-3 and before[-1][1] < 0.15e-3
    assert all(lr == pytest.approx(cosine_lr(sec, 6), rel=1e-5) for sec, lr in before)

    train(*args, "trainer.time_budget=9", "resume=true")  # a bigger budget: the decay stretches over 9 s in all
    last = last_state()
    assert 9 <= last["train_seconds"] < 11 and last["step"] > first["step"]
    after = logged(first["step"])
    assert after[0][0] >= first["train_seconds"] and after[-1][1] < 0.15e-3
    assert all(lr == pytest.approx(cosine_lr(sec, 9), rel=1e-5) for sec, lr in after)

    train(*args, "trainer.time_budget=9", "resume=true")  # used up: nothing more to train
    assert last_state()["step"] == last["step"]


def test_two_processes_share_one_clock_for_the_time_budget(lfw64, tmp_path):
    """Each rank's lr follows rank 0's clock: with trainer.time_budget the replicas stay identical."""
    run_dir = tmp_path / "ddp"
    launch(2, "vaeforge.train", *TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=100000",
           "trainer.time_budget=5", "trainer.audit_samples=true", "optim.warmup_steps=0")
    digests = {(run_dir / "audit" / f"params_rank{r}.txt").read_text() for r in range(2)}
    assert len(digests) == 1
    state = json.loads((sorted((run_dir / CKPT).iterdir())[-1] / "state.json").read_text())
    assert state["train_seconds"] >= 5 and state["step"] > 10


def test_a_cpu_run_without_deepspeed_says_nothing_of_deepspeed(lfw64, tmp_path):
    """accelerate imports DeepSpeed whenever it is installed, and DeepSpeed then warned "Setting accelerator to
    CPU" from real_accelerator.py in every CPU run (on stdout, through its own logger): a run that does not use
    DeepSpeed must print no DeepSpeed line on either stream."""
    assert importlib.util.find_spec("deepspeed") is not None  # installed (the [deepspeed] extra): the trap is armed
    clean_env = {k: v for k, v in env().items() if k != "DS_ACCELERATOR"}
    proc = train(*TINY, f"data.shards={lfw64}", f"run_dir={tmp_path / 'run'}", "trainer.max_steps=2", env=clean_env)
    assert "done: step 2" in proc.stdout
    for stream in (proc.stdout, proc.stderr):
        assert "[WARNING]" not in stream and "real_accelerator" not in stream, stream
