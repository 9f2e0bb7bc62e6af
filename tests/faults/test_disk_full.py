"""A disk that fills up during training (issue 22 item 8) ends the run with one line naming the path, saying the
disk is full and, for a checkpoint, that the previous one is intact; after space is freed, ``resume=true``
continues from it. The disk is a real full filesystem: a small tmpfs mounted in a user and mount namespace
(``unshare``, no root needed where unprivileged user namespaces are allowed), filled with ``dd``."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, PY, TINY, env, free_port

# Runs as root of its own namespaces: mount a 8 MB tmpfs on $FULL, train 4 steps, fill the tmpfs, continue to
# step 8 (must fail), free the space, continue again (must work). $TRAIN is the training command (word-split),
# "$@" are the training arguments.
SCRIPT = """
mount -t tmpfs -o size=8m tmpfs "$FULL" || exit 90
$TRAIN "$@" trainer.max_steps=4 > "$OUT/first.log" 2>&1 || exit 91
dd if=/dev/zero of="$FULL/filler" bs=64k 2>/dev/null
$TRAIN "$@" resume=true trainer.max_steps=8 > "$OUT/full.out" 2> "$OUT/full.err"
echo $? > "$OUT/full.rc"
ls "$FULL" > "$OUT/left"
rm "$FULL/filler"
$TRAIN "$@" resume=true trainer.max_steps=8 > "$OUT/freed.log" 2>&1 || exit 92
"""


def fill_during_training(full: Path, lfw64: Path, tmp_path: Path, train: str = f"{PY} -m vaeforge.train",
                         **extra_env: str) -> Path:
    """Run SCRIPT with a tmpfs on ``full`` (a folder of the run); returns the folder holding its outputs."""
    if shutil.which("unshare") is None:
        pytest.fail("this test needs unshare (util-linux) to mount a small tmpfs")
    out = tmp_path / "out"
    out.mkdir()
    full.mkdir(parents=True)
    args = [*TINY, f"data.shards={lfw64}", f"run_dir={full.parent}", "trainer.checkpoint_every=4"]
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SCRIPT, "sh", *args],
                          env=env(FULL=str(full), OUT=str(out), TRAIN=train, **extra_env), capture_output=True,
                          text=True,
                          timeout=900)
    logs = "\n".join(f"{p.name}: {p.read_text()[-2000:]}" for p in sorted(out.iterdir()))
    assert proc.returncode == 0, f"{proc.returncode}: {proc.stderr}\n{logs}"
    return out


def one_line_error(out: Path, tally) -> str:  # noqa: ANN001 - the fault suite's Counter
    """The full-disk run's one error line (exit status 2), counted as a case refused in one line (warnings before
    it, such as the filler file ignored in the checkpoints folder, are not errors)."""
    lines = [line for line in (out / "full.err").read_text().strip().splitlines()
             if not line.startswith("vaeforge: warning: ")]
    assert (out / "full.rc").read_text().strip() == "2" and len(lines) == 1, lines
    tally["cases"] += 1
    tally["refused"] += 1
    return lines[0]


def test_disk_full_during_a_checkpoint_names_it_and_keeps_the_previous_one(lfw64, tmp_path, tally):
    checkpoints = tmp_path / "run" / "checkpoints"
    out = fill_during_training(checkpoints, lfw64, tmp_path)
    line = one_line_error(out, tally)
    assert f"disk full while writing {checkpoints / 'step_00000008.tmp'}/" in line, line
    assert "(checkpoint step_00000008)" in line
    assert f"the previous checkpoint {checkpoints / 'step_00000004'} is intact" in line
    assert "free space" in line and "resume=true" in line
    assert (out / "left").read_text().split() == ["filler", "step_00000004"]  # the half-written one is removed
    assert f"resumed from {checkpoints / 'step_00000004'}" in (out / "freed.log").read_text()


def test_disk_full_under_tensorboard_names_the_folder(lfw64, tmp_path, tally):
    events = tmp_path / "run" / "tb"
    out = fill_during_training(events, lfw64, tmp_path)
    line = one_line_error(out, tally)
    assert f"cannot write TensorBoard events in {events}: disk full" in line, line
    assert "free space" in line and "resume=true" in line
    assert "resumed from" in (out / "freed.log").read_text()


def test_disk_full_during_a_deepspeed_checkpoint_on_two_ranks_names_it(lfw64, tmp_path, tally):
    """DeepSpeed writes its shards with torch.save, whose failed write carries no cause: still one line."""
    from test_distributed import EXTENSIONS, REPO

    checkpoints = tmp_path / "run" / "checkpoints"
    launch = (f"{BIN / 'accelerate'} launch --config_file {REPO / 'recipes/accelerate/zero2.yaml'} "
              f"--main_process_port {free_port()} -m vaeforge.train")
    out = fill_during_training(checkpoints, lfw64, tmp_path, launch, TORCH_EXTENSIONS_DIR=str(EXTENSIONS),
                               GLOO_SOCKET_IFNAME="lo")
    err = (out / "full.err").read_text()
    tally["cases"] += 1
    assert (out / "full.rc").read_text().strip() != "0"
    errors = [line for line in err.splitlines() if line.startswith("vaeforge: error: ")]
    assert errors and all("disk full while writing" in line for line in errors), err[-3000:]  # each rank its file
    assert all(f"the previous checkpoint {checkpoints / 'step_00000004'} is intact" in line for line in errors)
    tally["refused"] += 1
    print(f"DeepSpeed checkpoint on a full disk: {len(errors)} of 2 ranks named it, the other stopped as a peer")
    assert "step_00000004" in (out / "left").read_text().split()  # the .tmp is deleted by the next start
    assert f"resumed from {checkpoints / 'step_00000004'}" in (out / "freed.log").read_text()
