"""``vaeforge submit`` on a real one-node SLURM cluster (slurm/local-cluster.sh, loopback only): a 1-node 2-task
job trains, is preempted (USR2, as SLURM sends before a time limit), checkpoints, requeues itself and resumes to
the end with the step count continuing; ``--dry-run`` prints the sbatch script and the launch; a 3-point sweep runs
as one array, each point trained and evaluated in its own run folder (a preempted point requeued and resumed on
its own), and ``vaeforge leaderboard`` ranks them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from helpers import BIN, TINY, env, run
from vaeforge.submit import LOG_DIR, available_profiles, slurm_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
SLURM_DIR = Path(os.environ.get("VAEFORGE_SLURM_DIR", "/tmp/vaeforge-slurm"))
STEPS = 150  # the preempted job's length: long enough (~15 s) that the preemption lands well before it ends
SWEEP_STEPS = 120  # each sweep point's: the first point is preempted after its first checkpoint (every 5 steps)


def cluster(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), action], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VAEFORGE_SLURM_DIR": str(SLURM_DIR)})


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """The local cluster for the session (installed with apt-get if missing); taken down after, unless it was
    already up. Yields the environment clients need."""
    if os.geteuid() != 0:
        pytest.fail("the local SLURM cluster needs root (CI runs as root)")
    was_up = cluster("status").returncode == 0
    if not was_up:
        started = cluster("up")
        assert started.returncode == 0, started.stdout + started.stderr
    yield env(SLURM_CONF=str(SLURM_DIR / "slurm.conf"))
    if not was_up:
        cluster("down")


def submit(*args: str, **kw) -> subprocess.CompletedProcess:
    return run([str(BIN / "vaeforge"), "submit", *args], **kw)


def wait_until(predicate, timeout: float, what: str, job_id: str = "", run_dir: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster_report(job_id, run_dir)}")
        time.sleep(0.5)


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(none)"


def cluster_report(job_id: str, run_dir: Path | None) -> str:
    """What a timed-out wait needs to be understood: the job as SLURM sees it, its logs, the daemons' logs."""
    slurm_env = env(SLURM_CONF=str(SLURM_DIR / "slurm.conf"))
    parts = [subprocess.run(cmd, capture_output=True, text=True, env=slurm_env).stdout
             for cmd in (["sinfo", "-N", "-l"], ["squeue", "-l"], ["scontrol", "show", "job", job_id])
             if job_id or cmd[0] != "scontrol"]
    logs = sorted((run_dir / LOG_DIR).glob("*_log.*")) if run_dir else []
    parts += [f"--- {path.name}\n{tail(path)}" for path in logs]
    parts += [f"--- {name}\n{tail(SLURM_DIR / name)}" for name in ("slurmctld.log", "slurmd.log")]
    return "\n".join(parts)


def in_queue(job_id: str, slurm_env: dict[str, str]) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True,
                               env=slurm_env).stdout.strip())


def test_dry_run_prints_the_sbatch_script_and_the_launch(tmp_path):
    run_dir = tmp_path / "run"
    no_slurm = env(PATH=str(BIN))  # a laptop without SLURM's commands can still render the job
    out = submit("recipe=lfw_unet", "data.shards=data/lfw64", f"run_dir={run_dir}", "slurm=local",
                 "slurm.nodes=2", "slurm.gpus_per_node=4", "slurm.tasks_per_node=0", "slurm.partition=gpu",
                 "slurm.account=vision", "slurm.deepspeed=zero3", "slurm.time_min=90", "--dry-run",
                 env=no_slurm).stdout
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=vision", "#SBATCH --time=90",
                 "#SBATCH --signal=USR2@30", f"#SBATCH --output={run_dir}/slurm/%j_0_log.out",
                 "export GLOO_SOCKET_IFNAME=lo", "-m submitit.core._submit"]:
        assert line in out, line
    assert "MASTER_ADDR=127.0.0.1" in out and "WORLD_SIZE=8" in out and "ACCELERATE_USE_DEEPSPEED=true" in out
    assert re.search(r"ACCELERATE_DEEPSPEED_CONFIG_FILE=\S+/deepspeed/zero3\.json", out)
    assert f"-m vaeforge.train recipe=lfw_unet data.shards=data/lfw64 run_dir={run_dir} resume=true" in out
    assert not run_dir.exists()  # nothing submitted, nothing written
    wrong = submit("recipe=lfw_unet", "slurm=locl", "--dry-run", check=False, env=no_slurm)
    assert wrong.returncode == 2 and "unknown slurm profile 'locl'" in wrong.stderr and "'local'" in wrong.stderr


def test_profiles_of_the_working_folder_come_first(tmp_path, monkeypatch):
    shipped = available_profiles()
    assert {"local", "example-gpu"} <= set(shipped)
    assert all(path.parent == Path(str(resources.files("vaeforge.slurm"))) for path in shipped.values())
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "local.yaml").write_text("nodes: 3\n")
    monkeypatch.chdir(tmp_path)
    assert available_profiles()["local"] == tmp_path / "slurm" / "local.yaml"
    assert slurm_config({"slurm": "local"}).nodes == 3
    assert slurm_config({"slurm": "example-gpu"}).gpus_per_node == 8  # the shipped one, not shadowed


def test_two_task_job_trains_is_preempted_requeues_and_resumes(slurm_cluster, lfw64, tmp_path):
    run_dir = tmp_path / "run"
    out = submit(*TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", f"trainer.max_steps={STEPS}",
                 "trainer.checkpoint_every=5", "trainer.val_every=0", "trainer.image_every=0", "slurm=local",
                 env=slurm_cluster).stdout
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    # any checkpoint: on a fast machine step 5's is already rotated out (keep_checkpoints) when the poll looks
    wait_until(lambda: any((run_dir / "checkpoints").glob("step_*[0-9]")), 240, "the first checkpoint", job_id, run_dir)
    run(["scancel", "--signal=USR2", job_id], env=slurm_cluster)  # what SLURM sends signal_delay_s before the limit
    wait_until(lambda: not in_queue(job_id, slurm_cluster), 300, "the requeued job to finish", job_id, run_dir)

    logs = "".join(p.read_text() for p in sorted((run_dir / "slurm").glob(f"{job_id}_0_log.*")))
    stopped = int(re.search(r"stopping at step (\d+) \(signal\)", logs).group(1))
    assert 5 <= stopped < STEPS
    assert "this job is preempted" in logs and f"Requeued job {job_id}" in logs
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped:08d}'} (step {stopped}" in logs
    state = json.loads((run_dir / "checkpoints" / f"step_{STEPS:08d}" / "state.json").read_text())
    assert state["step"] == STEPS and state["images_seen"] == STEPS * 32 and state["world_size"] == 2
    info = json.loads((run_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["slurm_job_id"] == job_id and info["backend"] == "gloo"
    assert {p.name for p in (run_dir / "slurm").glob(f"{job_id}_*_log.out")} == {f"{job_id}_0_log.out",
                                                                               f"{job_id}_1_log.out"}


def test_three_point_sweep_is_one_array_and_its_leaderboard_has_every_point(slurm_cluster, lfw64, lpips_weights,
                                                                            tmp_path):
    """... and a point preempted mid-run is requeued and resumed on its own, the others untouched."""
    root = tmp_path / "sweep"
    lrs = ["3e-4", "3e-3", "3e-2"]
    out = submit(*TINY, f"data.shards={lfw64}", f"run_dir={root}", f"trainer.max_steps={SWEEP_STEPS}",
                 "trainer.checkpoint_every=5", "trainer.val_every=0", "trainer.image_every=0", "slurm=local",
                 "slurm.tasks_per_node=1", f"sweep=optim.lr=[{','.join(lrs)}]", "then=evaluate", "then.weights=model",
                 "then.limit=64", "then.samples=32", "then.samplers=[prior]",
                 f"then.lpips_weights={lpips_weights / 'lpips_alexnet.safetensors'}", env=slurm_cluster).stdout
    job_id = re.search(r"submitted array job (\d+): 3 runs", out).group(1)
    wait_until(lambda: any((root / f"lr={lrs[0]}" / "checkpoints").glob("step_*[0-9]")), 240,
               "the first point's first checkpoint", job_id, root)
    run(["scancel", "--signal=USR2", f"{job_id}_0"], env=slurm_cluster)
    wait_until(lambda: not in_queue(job_id, slurm_cluster), 300, "the array to finish", job_id, root)
    logs = {i: "".join(p.read_text() for p in sorted((root / LOG_DIR).glob(f"{job_id}_{i}_0_log.*"))) for i in range(3)}
    stopped = int(re.search(r"stopping at step (\d+) \(signal\)", logs[0]).group(1))
    assert 5 <= stopped < SWEEP_STEPS and f"Requeued job {job_id}_0" in logs[0], logs[0]
    assert f"(step {stopped}" in logs[0] and "resumed from" in logs[0], logs[0]
    assert not any("(signal)" in logs[i] or "Requeued" in logs[i] for i in (1, 2)), logs

    index = json.loads((root / "sweep.json").read_text())
    assert [(p["folder"], p["job_id"]) for p in index["points"]] == [(f"lr={lr}", f"{job_id}_{i}")
                                                                     for i, lr in enumerate(lrs)]
    board = run([str(BIN / "vaeforge"), "leaderboard", f"dir={root}", "sort=-psnr"]).stdout
    lines = board.splitlines()
    assert lines[0].startswith("| run | optim.lr | steps | source | images | psnr | ssim | lpips |"), board
    assert "checkerboard_recon" in lines[0] and "| kl |" in lines[0], board
    rows = [dict(zip(lines[0].strip("| ").split(" | "), line.strip("| ").split(" | "))) for line in lines[2:5]]
    assert sorted(float(r["optim.lr"]) for r in rows) == [float(lr) for lr in lrs]
    assert all(r["steps"] == str(SWEEP_STEPS) and r["source"] == "evaluate" and r["images"] == "64" for r in rows), board
    psnr = [float(r["psnr"]) for r in rows]
    assert psnr == sorted(psnr, reverse=True) and len(set(psnr)) == 3  # the learning rates made three models
    assert (root / "leaderboard.html").is_file() and (root / "leaderboard.md").is_file()
