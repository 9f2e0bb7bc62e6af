"""trainer.channels_last and trainer.compile: what ``auto`` picks, what is refused, and real runs of each that
train like eager, resume bit-exactly, write plain checkpoints and load in ``vaeforge.load`` without the options."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vaeforge
from helpers import TINY, cut_back, train
from vaeforge.config.schema import TrainerConfig
from vaeforge.errors import ConfigError
from vaeforge.runs.checkpoints import state_digest
from vaeforge.train import speed as speeds

STEPS, HALF = 6, 3
PARTS = ("model", "ema", "owned_adv.discriminator")
# TINY with the adversarial plugin from the first step (its discriminator: an owned module with its own optimizer)
RUN = [*TINY, "losses.adv.name=adversarial", "losses.adv.weight=0.5", "losses.adv.args.disc_width=8",
       "losses.adv.args.start=0", f"trainer.checkpoint_every={HALF}", "trainer.log_every=1", "trainer.val_every=0",
       "trainer.image_every=0"]
# train/loss of a channels-last or compiled run against eager's (fp32, the same data and noise). The first step's
# weights are the same: only the kernels' order of summation differs. After it, Adam's first updates amplify
# differences in near-zero gradients and the adversarial term's adaptive weight (a ratio of gradient norms, ~300-500
# here) amplifies them further: 2.5e-3 measured for the compiled run at step 6, 1e-7 for channels-last.
FIRST_RTOL, LOSS_RTOL = 1e-5, 5e-3
RECON_RTOL = 0.01  # the loaded model's reconstruction MSE on val faces against the eager run's


@pytest.mark.parametrize("kind, precision", sorted(speeds.AUTO))
def test_auto_follows_the_measured_table_and_compiles_only_long_runs(kind, precision):
    layout, compiled = speeds.AUTO[kind, precision]
    long = TrainerConfig(channels_last="auto", compile="auto", max_steps=speeds.COMPILE_MIN_STEPS)
    speed = speeds.resolve(long, precision, None, kind)
    assert speed.channels_last == layout
    assert (speed.compile_mode is not None) == (compiled and speeds.has_compiler())
    for short in (TrainerConfig(compile="auto", max_steps=speeds.COMPILE_MIN_STEPS - 1),
                  TrainerConfig(compile="auto", max_steps=10**6, time_budget=speeds.COMPILE_MIN_SECONDS - 1)):
        assert speeds.resolve(short, precision, None, kind).compile_mode is None


def test_on_and_off_win_over_the_table_and_yaml_booleans_count_as_on_and_off():
    for on, off in (("on", "off"), (True, False)):
        forced = speeds.resolve(TrainerConfig(channels_last=on, compile=on, compile_mode="max-autotune", max_steps=1),
                                "no", None, "unknown")
        assert forced == speeds.Speed(True, "max-autotune")
        assert speeds.resolve(TrainerConfig(channels_last=off, compile=off), "bf16", None, "cpu_bf16") == speeds.Speed()


def test_deepspeed_keeps_nchw_compiles_up_to_zero2_and_refuses_the_rest_in_one_line():
    auto = TrainerConfig(channels_last="auto", compile="auto", max_steps=10**6)
    assert not speeds.resolve(auto, "no", 2, "cpu").channels_last
    assert speeds.resolve(auto, "no", 3, "cpu").compile_mode is None
    assert speeds.resolve(TrainerConfig(compile="on"), "no", 2).compile_mode == "default"
    for key, stage in (("channels_last", 2), ("compile", 3)):
        with pytest.raises(ConfigError, match=f"trainer.{key}=on is not supported under DeepSpeed"):
            speeds.resolve(TrainerConfig(**{key: "on"}), "no", stage)


def losses(run_dir: Path) -> dict[int, float]:
    tb = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    tb.Reload()
    return {e.step: e.value for e in tb.Scalars("train/loss")}


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def weights(run_dir: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    return {part: load_file(str(checkpoint(run_dir, step) / f"{part}.safetensors")) for part in PARTS}


@pytest.fixture(scope="module")
def eager_run(lfw64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN trained STEPS steps eagerly in NCHW, checkpoints every HALF steps: the reference."""
    run_dir = tmp_path_factory.mktemp("eager") / "run"
    train(*RUN, f"data.shards={lfw64}", f"run_dir={run_dir}", f"trainer.max_steps={STEPS}",
          "trainer.channels_last=off", "trainer.compile=off")
    return run_dir


@pytest.mark.parametrize("options", [["trainer.channels_last=on", "trainer.compile=off"],
                                     ["trainer.channels_last=off", "trainer.compile=on"]],
                         ids=["channels_last", "compiled"])
def test_a_run_trains_like_eager_resumes_exactly_and_loads_plain(options, eager_run, lfw64, tmp_path):
    """The model, its loss terms and the adversarial plugin's discriminator (an owned module, with the adaptive
    weight's extra backward) laid out or compiled: losses within LOSS_RTOL of eager, a run resumed at HALF ends
    bit-exactly where the straight one does, and the checkpoints hold eager's names and shapes."""
    args = [*RUN, f"data.shards={lfw64}", *options]
    straight = tmp_path / "straight"
    train(*args, f"run_dir={straight}", f"trainer.max_steps={STEPS}")
    resumed = cut_back(straight, tmp_path / "resumed", HALF)
    train(*args, f"run_dir={resumed}", f"trainer.max_steps={STEPS}", "resume=true")

    reference, got = losses(eager_run), losses(straight)
    assert got.keys() == reference.keys()
    for step, value in got.items():
        rtol = FIRST_RTOL if step == 1 else LOSS_RTOL
        assert value == pytest.approx(reference[step], rel=rtol), (step, value, reference[step])
    expected = weights(eager_run, STEPS)
    trained = weights(straight, STEPS)
    for part in expected:  # plain names and shapes (no `_orig_mod.`), contiguous NCHW tensors in the files
        assert {k: v.shape for k, v in trained[part].items()} == {k: v.shape for k, v in expected[part].items()}
    again = weights(resumed, STEPS)
    assert {p: state_digest(w) for p, w in again.items()} == {p: state_digest(w) for p, w in trained.items()}

    model = vaeforge.load(straight)  # built from the config alone: eager, NCHW, the checkpoint's EMA weights
    assert all(p.is_contiguous() for p in model.vae.parameters())
    assert state_digest(model.vae.state_dict()) == state_digest(trained["ema"])
    x = torch.stack([s.image for s in model.samples("val", 8)])
    error, eager_error = (float(((m.reconstruct(x) - x) ** 2).mean()) for m in (model, vaeforge.load(eager_run)))
    assert error == pytest.approx(eager_error, rel=RECON_RTOL)
