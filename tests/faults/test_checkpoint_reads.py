"""Reading a checkpoint that is not what it should be (issue 22 item 8): weights holding NaN are refused in one
line naming the file (they loaded silently and ``reconstruct`` reported ``psnr: nan``); a checkpoint that a
running training rotates away while a task loads it is replaced by the newest complete one, not called damaged."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

import vaeforge
from helpers import PY, TINY, env, kill_group, run, train, wait_for
from vaeforge.errors import CheckpointError


def test_non_finite_weights_are_refused_naming_the_file(trained_run, tmp_path, tally):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("tasks", "priors", "vectors"))
    folder = max((run_dir / "checkpoints").iterdir())
    for name in ("model.safetensors", "ema.safetensors"):
        state = load_file(folder / name)
        state[sorted(state)[0]].view(-1)[0] = float("nan")
        save_file(state, str(folder / name))
    task = run([PY, "-m", "vaeforge.run", "task=reconstruct", f"run_dir={run_dir}", "input=val", "limit=2",
                f"output={tmp_path / 'out'}"], check=False)
    resume = train(f"run_dir={run_dir}", "resume=true", "trainer.max_steps=12", check=False)
    for proc, name in ((task, "ema.safetensors"), (resume, "model.safetensors")):
        lines = proc.stderr.strip().splitlines()
        tally["cases"] += 1
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        tally["refused"] += 1
        assert f"checkpoint file {folder / name} holds non-finite weights" in lines[0], lines[0]


def newest_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint folder (0: none yet)."""
    steps = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*") if p.name[5:].isdigit()]
    return max(steps, default=0)


def test_loading_while_a_training_rotates_checkpoints_gets_the_newest(lfw64, tmp_path, tally):
    """A training writes a checkpoint every step and keeps one; every load meanwhile must succeed."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([PY, "-m", "vaeforge.train", *TINY, f"data.shards={lfw64}", f"run_dir={run_dir}",
                             "trainer.checkpoint_every=1", "trainer.keep_checkpoints=1", "trainer.max_steps=100000",
                             "trainer.val_every=0", "trainer.image_every=0"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        # past step 3: step 3's own folder lives one step only (rotated at step 4), shorter than a poll on a fast CPU
        wait_for(lambda: newest_step(run_dir) >= 3, 300, proc)
        loaded, failures, started = [], [], time.monotonic()
        while len(loaded) + len(failures) < 40 and time.monotonic() - started < 120:
            try:
                loaded.append(vaeforge.load(run_dir).checkpoint.name)
            except CheckpointError as exc:
                failures.append(str(exc))
        assert proc.poll() is None, proc.stderr.read()  # the training rotated all along
    finally:
        kill_group(proc, signal.SIGTERM)
    tally["loads"] += len(loaded) + len(failures)
    tally["loads_ok"] += len(loaded)
    assert not failures, f"{len(failures)} of {len(loaded) + len(failures)} loads failed, e.g. {failures[0]}"
    assert len(set(loaded)) > 5  # the loads did overlap the rotation
