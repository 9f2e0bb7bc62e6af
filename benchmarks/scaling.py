"""Scaling on one machine: training images/s with 1 vs 2 processes, and peak memory per rank for DDP vs
DeepSpeed ZeRO-2 vs ZeRO-3 on a model large enough for weights and optimizer state to dominate.

    python benchmarks/scaling.py --data data/lfw64 [--steps 25] [--memory-steps 6] [--hidden 4096,4096]
                                 [--only throughput|memory]

Every configuration is a real ``accelerate launch --config_file recipes/accelerate/<config>.yaml`` of the
training engine (run from the repository root). Images/s is the median of the engine's own
``perf/images_per_sec`` windows after the first (start-up excluded), over all ranks. Peak memory is each rank's
peak RSS, once for setting up (the whole model is built on every rank before DeepSpeed shards it) and once for
training (the high-water mark reset in between); both include the ~0.7-1 GB every process pays for torch,
DeepSpeed and the loader. The memory runs keep no EMA copy (a whole fp32 model per rank that ZeRO does not
shard), so the difference shown is the one ZeRO makes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
COMMON = ["trainer.val_every=0", "trainer.image_every=0", "trainer.checkpoint_every=0", "trainer.progress=false",
          "trainer.log_every=5", "data.num_workers=1", "optim.warmup_steps=0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, threads: int, out: Path, train_args: list[str]) -> None:
    """One training under ``accelerate launch`` of this file's worker mode; each rank records its peak RSS."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"recipes/accelerate/{config}.yaml",
           "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", str(threads),
           str(Path(__file__).resolve()), "--worker", str(out), *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "GLOO_SOCKET_IFNAME": "lo",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def worker(out: Path, train_args: list[str]) -> None:
    """Train in this process (a rank started by accelerate), then write this rank's peak RSS in MB: while
    setting up (model built, DeepSpeed initialised) and while training (the kernel's high-water mark is reset
    in between; it includes the final checkpoint)."""
    from vaeforge.cli.args import parse_overrides
    from vaeforge.train.__main__ import resolve_config
    from vaeforge.train.trainer import Trainer

    trainer = Trainer(resolve_config(parse_overrides(train_args)))
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    try:
        trainer.fit()
    finally:
        trainer.close()
    status = Path("/proc/self/status").read_text()
    train = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    rank = os.environ.get("RANK", "0")
    (out / f"rss_rank{rank}.json").write_text(json.dumps({"setup": setup, "train": train}))


def images_per_sec(run_dir: Path) -> float:
    tb = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    tb.Reload()
    windows = [e.value for e in tb.Scalars("perf/images_per_sec")][1:]
    return statistics.median(windows)


def peaks(out: Path) -> list[dict[str, float]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("rss_rank*.json"))]


def throughput(data: Path, steps: int, batch: int, tmp: Path) -> None:
    print(f"\n### Images/s, lfw_unet, batch {batch} per process, {steps} steps, 2 CPU cores in total\n")
    print("| launch | processes x threads | global batch | images/s | per process |")
    print("|---|---|---|---|---|")
    for config, procs, threads in [("single", 1, 1), ("single", 1, 2), ("ddp", 2, 1), ("zero2", 2, 1)]:
        out = tmp / f"speed-{config}-{threads}"
        out.mkdir()
        launch(config, threads, out, ["recipe=lfw_unet", f"data.shards={data}", f"run_dir={out / 'run'}",
                                      f"trainer.max_steps={steps}", f"data.batch_size={batch}", *COMMON])
        rate = images_per_sec(out / "run")
        print(f"| {config}.yaml | {procs} x {threads} | {batch * procs} | {rate:.1f} | {rate / procs:.1f} |",
              flush=True)


def memory(data: Path, steps: int, hidden: str, tmp: Path) -> None:
    widths = [int(w) for w in hidden.split(",")]
    pixels = 3 * 64 * 64
    params = 2 * pixels * widths[0] + 2 * sum(a * b for a, b in zip(widths, widths[1:]))
    print(f"\n### Peak RSS per rank, lfw_mlp hidden {widths} (~{params / 1e6:.0f}M parameters, "
          f"{params * 4 / 2**20:.0f} MB fp32), AdamW, 2 processes, no EMA\n")
    print("| launch | rank 0 training (MB) | rank 1 training (MB) | rank 0 set-up (MB) | rank 1 set-up (MB) |")
    print("|---|---|---|---|---|")
    for config in ("ddp", "zero2", "zero3"):
        out = tmp / f"memory-{config}"
        out.mkdir()
        launch(config, 1, out, ["recipe=lfw_mlp", "trainer.mixed_precision=no",  # the fp32 sizes printed above
                                f"model.backbone.args.hidden=[{hidden}]", "trainer.ema_decay=0",
                                f"data.shards={data}", f"run_dir={out / 'run'}", f"trainer.max_steps={steps}",
                                "data.batch_size=16", *COMMON])
        ranks = peaks(out)
        cells = [f"{r['train']:.0f}" for r in ranks] + [f"{r['setup']:.0f}" for r in ranks]
        print(f"| {config}.yaml | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps of each throughput run")
    parser.add_argument("--batch", type=int, default=32, help="per-process batch of the throughput runs")
    parser.add_argument("--memory-steps", type=int, default=6)
    parser.add_argument("--hidden", default="4096,4096", help="MLP widths of the memory runs")
    parser.add_argument("--only", choices=["throughput", "memory"], help="run one of the two parts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "memory":
            throughput(args.data.resolve(), args.steps, args.batch, Path(tmp))
        if args.only != "throughput":
            memory(args.data.resolve(), args.memory_steps, args.hidden, Path(tmp))
    print(json.dumps({"load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
