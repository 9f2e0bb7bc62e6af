"""Running vaeforge's entry points as a user would: real subprocesses, real launchers."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PY = sys.executable
BIN = Path(PY).parent

# A small model on the real data: fast on 2 CPU cores, same code paths as the real recipes. fp32 and no LPIPS
# term, so exactness tests (resume, DDP vs one process) compare bit-for-bit; bf16 and LPIPS have their own tests.
TINY_RUN = [
    "recipe=lfw_unet", "model.latent_dim=16", "trainer.mixed_precision=no", "losses.perceptual.weight=0",
    "data.batch_size=16", "data.num_workers=0", "data.val_max_batches=2", "data.val_batch_size=32",
    "trainer.log_every=5", "trainer.val_every=20", "trainer.image_every=20", "trainer.checkpoint_every=10",
    "trainer.progress=false",
    # auto would compile a run planned long (max_steps=100000 runs stopped by a signal or a time limit): slow, and
    # a resumed run with other max_steps would switch kernels; auto's channels-last (fp32 on an AVX512 CPU) made
    # these tiny models slower. tests/test_speed.py runs both paths against eager.
    "trainer.compile=off", "trainer.channels_last=off",
]
TINY = [*TINY_RUN, "model.backbone.args.widths=[8,16,32]"]
TRAINED_STEPS = 10  # conftest's trained_run: TINY trained this many steps, its one checkpoint at the last
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def env(**extra: str) -> dict[str, str]:
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return {**base, **extra}


def run(args: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture its output; on an unexpected exit status show what it printed."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", env()), **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train(*overrides: str, **kw) -> subprocess.CompletedProcess:
    return run([PY, "-m", "vaeforge.train", *overrides], **kw)


def task(*args: str, **kw) -> subprocess.CompletedProcess:
    return run([PY, "-m", "vaeforge.run", *args], **kw)


def cut_back(run_dir: Path, into: Path, step: int) -> Path:
    """A copy of a finished run as it stood when its checkpoint at ``step`` was the newest, as if stopped there:
    later checkpoints and the end-of-run parameter audit (``trainer.audit_samples``) removed. Resuming it must
    end where the original did; one launch fewer than training the first part again."""
    shutil.copytree(run_dir, into)
    assert (into / "checkpoints" / f"step_{step:08d}").is_dir(), f"{run_dir} has no checkpoint at step {step}"
    for folder in (into / "checkpoints").iterdir():
        if folder.name.startswith("step_") and int(folder.name.split("_")[1].split(".")[0]) > step:
            shutil.rmtree(folder)
    for audit in (into / "audit").glob("params_rank*.txt"):
        audit.unlink()
    return into


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, module: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """``accelerate launch`` with ``nproc`` CPU processes over gloo, rendezvous on 127.0.0.1."""
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(free_port()), "-m", module, *args]
    return run(cmd, **kw)


def wait_for(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def dump_dom(chromium: str, page: Path, profile: Path) -> str:
    """The page's DOM as headless Chromium built it."""
    return run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
               timeout=120).stdout
