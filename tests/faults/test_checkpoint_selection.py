"""The checkpoint to resume from is the newest complete one by the step inside it: a folder copied to a higher
step, a stale state.json or a stray folder is named and ignored, never resumed from and never rotated away
(before: ``step_99999999`` or a state.json with step -5 became "latest" and rotation deleted the real newest
checkpoints; ``mkdir checkpoints/step_abc`` broke train, run and load with a raw ValueError)."""
from __future__ import annotations

import json
import shutil

import pytest

import vaeforge
from helpers import PY, TINY, run, train

CKPT = "checkpoints"


@pytest.fixture()
def two_checkpoints(lfw64, tmp_path):
    run_dir = tmp_path / "run"
    train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=10", "trainer.checkpoint_every=5",
          "trainer.keep_checkpoints=2", "trainer.val_every=0", "trainer.image_every=0")
    return run_dir


def resume(run_dir, steps: int):
    """Continue the run from its saved config (no recipe: it would set data.shards again)."""
    return train(f"run_dir={run_dir}", "resume=true", f"trainer.max_steps={steps}")


def test_stray_copied_and_stale_checkpoints_are_named_and_left_alone(two_checkpoints, tally):
    run_dir = two_checkpoints
    root = run_dir / CKPT
    (root / "step_abc").mkdir()  # stray
    shutil.copytree(root / "step_00000005", root / "step_99999999")  # copied to a higher step
    stale = json.loads((root / "step_00000010" / "state.json").read_text())
    tally["trials"] += 1
    tally["faults"] += 2

    assert vaeforge.load(run_dir).checkpoint.name == "step_00000010"
    # no prior fit: the checkpoint choice is tested (the flow fit is tested in test_priors)
    task = run([PY, "-m", "vaeforge.run", "task=sample", f"run_dir={run_dir}", "n=2", "sampler=prior"])
    assert "wrote" in task.stdout

    proc = resume(run_dir, 12)
    out = proc.stdout + proc.stderr
    assert f"resumed from {root / 'step_00000010'}" in out
    assert "ignored in" in out and "step_abc (not a folder named step_<8 digits>)" in out
    assert "step_99999999 (its state.json says step 5)" in out
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step_00000010", "step_00000012", "step_99999999", "step_abc"]  # rotation kept the two newest

    stale["step"] = -5  # a state.json that lies about the newest checkpoint: resume from the one before it
    (root / "step_00000012" / "state.json").write_text(json.dumps(stale))
    proc = resume(run_dir, 14)
    out = proc.stdout + proc.stderr
    assert f"resumed from {root / 'step_00000010'}" in out and "step_00000012 (its state.json says step -5)" in out
    assert (root / "step_00000012").is_dir()  # not deleted: it is newer than the checkpoint resumed from
    tally["resumes"] += 1
    tally["resumes_intact"] += 1
