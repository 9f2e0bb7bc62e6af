"""SIGKILL at random moments (checkpoint writes included), ten times in a row on one run: every resume starts
from an intact checkpoint, the step count continues, no sample is skipped, and the final weights equal those
of a run that was never interrupted."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import PY, TINY, env, kill_group, train, wait_for

CKPT = "checkpoints"
TRIALS = 10
PLANNED_STEPS = 1000  # what the killed attempts are asked for: each is killed 2-10 steps past its resume point
TAIL = 4  # the last resume then trains this far past the last step any attempt reached: the run's end
# A constant learning rate: where the run ends (max_steps) changes nothing before it, so the straight run trains
# to the same end without the long planned tail.
ARGS = [*TINY, "trainer.checkpoint_every=2", "trainer.keep_checkpoints=2", "trainer.val_every=0",
        "trainer.image_every=0", "optim.schedule=constant", "trainer.audit_samples=true",
        "model.backbone.args.stem=1"]  # steps slow enough that every one of the TRIALS attempts is killed mid-run


def intact(folder: Path) -> bool:
    """A checkpoint is intact when every file is there and loads."""
    state = json.loads((folder / "state.json").read_text())
    load_file(str(folder / "model.safetensors"))
    load_file(str(folder / "ema.safetensors"))
    for name in ("optimizer.pt", "rng_rank0.pt"):
        torch.load(folder / name, weights_only=True)
    return state["step"] == int(folder.name.split("_")[1])


def complete(run_dir: Path) -> list[Path]:
    root = run_dir / CKPT
    return sorted(p for p in root.iterdir() if not p.name.endswith(".tmp")) if root.is_dir() else []


def trained_steps(run_dir: Path) -> dict[int, str]:
    """What each step trained on, the last attempt winning (steps after a checkpoint are replayed on resume)."""
    lines = (run_dir / "audit" / "samples_rank0.txt").read_text().splitlines()
    return {int(line.split()[0]): " ".join(line.split()[2:]) for line in lines}


def test_ten_random_sigkills_lose_nothing(lfw64, tmp_path, tally):
    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    last_step, kills, attempts = 0, 0, 0
    for _ in range(TRIALS):
        proc = subprocess.Popen([PY, "-m", "vaeforge.train", *ARGS, f"data.shards={lfw64}", f"run_dir={run_dir}",
                                 f"trainer.max_steps={PLANNED_STEPS}", "resume=true"], env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        # Wait until this attempt has written a checkpoint of its own, then kill at a random moment after it:
        # with a checkpoint every 2 steps, a good share of kills land inside a checkpoint write.
        wait_for(lambda: bool(complete(run_dir)) and int(complete(run_dir)[-1].name.split("_")[1]) > last_step,
                 300, proc)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            kill_group(proc, signal.SIGKILL)
            kills += 1
        attempts += 1
        newest = complete(run_dir)[-1]
        tally["resumes"] += 1
        step = int(newest.name.split("_")[1])
        if intact(newest) and step >= last_step:
            tally["resumes_intact"] += 1
        last_step = step
    tally["trials"] += attempts
    tally["faults"] += kills
    end = max(trained_steps(run_dir)) + TAIL  # the replayed steps after the newest checkpoint included
    train(*ARGS, f"data.shards={lfw64}", f"run_dir={run_dir}", f"trainer.max_steps={end}", "resume=true")
    final = json.loads((run_dir / CKPT / f"step_{end:08d}" / "state.json").read_text())
    assert final["step"] == end
    straight = tmp_path / "straight"
    train(*ARGS, f"data.shards={lfw64}", f"run_dir={straight}", f"trainer.max_steps={end}")
    expected, got = trained_steps(straight), trained_steps(run_dir)
    lost = sum(len(set(keys.split()) - set(got.get(step, "").split())) for step, keys in expected.items())
    tally["items_lost"] += lost
    assert lost == 0 and got == expected
    a = load_file(str(straight / CKPT / f"step_{end:08d}" / "model.safetensors"))
    b = load_file(str(run_dir / CKPT / f"step_{end:08d}" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert attempts == kills == TRIALS
    assert tally["resumes_intact"] == tally["resumes"]
