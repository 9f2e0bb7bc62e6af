"""A checkpoint file crafted to run code when unpickled is refused, never executed."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

import vaeforge
from helpers import TINY, TRAINED_STEPS, train
from vaeforge.errors import CheckpointError
from vaeforge.runs.checkpoints import latest_checkpoint


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_in_a_checkpoint_is_never_executed(lfw64, trained_copy, tmp_path, tally):
    run_dir = trained_copy
    marker = tmp_path / "pwned"
    folder = latest_checkpoint(run_dir)
    for name in ("optimizer.pt", "rng_rank0.pt"):
        original = (folder / name).read_bytes()
        (folder / name).write_bytes(pickle.dumps({"state": Exploit(marker)}))
        proc = train(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "resume=true",
                     f"trainer.max_steps={TRAINED_STEPS + 2}", check=False)
        tally["faults"] += 1
        tally["trials"] += 1
        tally["cases"] += 1
        tally["executed"] += marker.exists()
        assert proc.returncode == 2 and f"{folder / name} is damaged or not a plain-data file" in proc.stderr
        tally["refused"] += 1
        assert not marker.exists()
        (folder / name).write_bytes(original)
    # The weights themselves are safetensors: loading a run for inference never unpickles anything.
    assert vaeforge.load(run_dir).checkpoint == folder
    assert not marker.exists()


def test_weights_must_be_safetensors(trained_copy):
    model = latest_checkpoint(trained_copy) / "ema.safetensors"
    model.write_bytes(pickle.dumps({"weight": 1}))
    with pytest.raises(CheckpointError, match="is damaged or unreadable"):
        vaeforge.load(trained_copy)
