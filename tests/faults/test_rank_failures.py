"""A failure on one rank ends the whole job fast: the failing rank prints the real error once, the others say in
one line that a peer failed, and nobody waits in a collective or a barrier (before: a truncated shard on one of
2 ranks hung until killed at 150 s; a killed loader worker of rank 0 hung 6 minutes)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from helpers import BIN, env, free_port

DEADLINE = 60  # seconds from launch to exit, start-up of two ranks included (a failure itself ends within ~15 s)
AFTER_FAULT = 30  # seconds from a fault injected into a running job to its exit
MLP = ["recipe=lfw_mlp", "model.latent_dim=8", "model.backbone.args.hidden=[32]", "trainer.progress=false",
       "trainer.val_every=0", "trainer.image_every=0", "trainer.max_steps=100000", "data.num_workers=1"]


def launch_two(*args: str) -> subprocess.Popen:
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(free_port()), "-m", "vaeforge.train", *args]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, started: float) -> tuple[str, float]:
    """The job's output and seconds from launch to exit; a job still running at the deadline is killed."""
    try:
        out, _ = proc.communicate(timeout=max(1.0, DEADLINE - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the job hung past {DEADLINE} s:\n{out[-3000:]}") from None
    return out, time.monotonic() - started


def test_a_truncated_shard_on_one_rank_ends_the_job_with_its_name_once(lfw64, tmp_path, tally):
    shards = tmp_path / "shards"
    shutil.copytree(lfw64, shards)
    bad = shards / "train-000005.tar"
    os.truncate(bad, 20000)
    started = time.monotonic()
    out, seconds = finish(launch_two(*MLP, f"data.shards={shards}", f"run_dir={tmp_path / 'run'}"), started)
    tally["trials"] += 1
    tally["faults"] += 1
    assert out.count("vaeforge: error:") == 1 and f"shard {bad}: unexpected end of data" in out, out[-3000:]
    assert "another rank failed (its error is above)" in out
    record_end(tally, seconds)
    print(f"truncated shard on one rank: job ended in {seconds:.1f} s")


def record_end(tally, seconds: float) -> None:  # noqa: ANN001 - the fault suite's Counter
    """Count a multi-process failure that ended with its error printed once, and keep the slowest end."""
    tally["rank_failures"] += 1
    tally["slowest_end_s"] = max(tally["slowest_end_s"], round(seconds))


def rank0_loader_worker(run_dir: Path) -> int | None:
    """The pid of rank 0's DataLoader worker: a child of the training process whose environment says RANK=0."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"run_dir={run_dir}".encode() in cmdline and b"RANK=0" in environ and b"vaeforge.train" in cmdline:
            children = (proc / "task" / proc.name / "children").read_text().split()
            if children:
                return int(children[0])
    return None


def test_a_killed_loader_worker_ends_the_job_with_one_clear_line(lfw64, tmp_path, tally):
    run_dir = tmp_path / "run"
    proc = launch_two(*MLP, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.checkpoint_every=5")
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints").is_dir() or not any((run_dir / "checkpoints").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    worker = rank0_loader_worker(run_dir)
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    out, seconds = finish(proc, time.monotonic())
    tally["trials"] += 1
    tally["faults"] += 1
    assert proc.returncode != 0
    assert out.count("vaeforge: error: a data loader worker process died") == 1, out[-3000:]
    assert seconds < AFTER_FAULT, f"the job took {seconds:.0f} s to end after the kill"
    record_end(tally, seconds)
    print(f"killed loader worker of rank 0: job ended {seconds:.1f} s after the kill")
