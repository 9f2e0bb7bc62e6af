"""Engine overhead: images/s of `vaeforge.train` vs a bare PyTorch loop with the same model, batch, optimizer,
loss and threads, measured in one run; plus the data-wait fraction and peak memory of the training process.

    python benchmarks/overhead.py --data data/lfw64 [--recipe lfw_unet] [--steps 60] [--threads 2] [--rounds 7]

The bare loop trains on batches decoded into memory beforehand (no loader at all), so the ratio charges the
engine with everything it adds: streaming and decoding, Accelerate, EMA, logging.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bare_step import BareStep
from memory import peak_rss_mb
from vaeforge.config import load_config
from vaeforge.data.loader import eval_batches
from vaeforge.data.manifest import read_manifest, shard_paths


def preload(cfg, data: Path, count: int) -> list[torch.Tensor]:
    """``count`` full training batches decoded into memory, as floats in [0, 1]."""
    manifest = read_manifest(data)
    batches = []
    for b in eval_batches(shard_paths(data, manifest, "train"), cfg.data.batch_size, 0, 1):
        if b["image"].shape[0] == cfg.data.batch_size:
            batches.append(b["image"].float() / 255.0)
        if len(batches) == count:
            return batches
    raise SystemExit(f"{data} has fewer than {count} training batches of {cfg.data.batch_size}")


def bare_loop(cfg, image_size: int, batches: list[torch.Tensor], warmup: int) -> float:
    """Images/s of a hand-written loop (bare_step.BareStep) on preloaded batches, after ``warmup`` steps."""
    bare = BareStep(cfg, image_size)
    for i, images in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        bare.step(images, i)
    return (len(batches) - warmup) * cfg.data.batch_size / (time.perf_counter() - start)


def launch_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}


def bare(args: argparse.Namespace) -> float:
    """Images/s of the bare loop in a fresh process started like the engine's (same interpreter, environment and
    threads), so that neither loop runs in a process warmed up by the other."""
    cmd = [sys.executable, __file__, "--bare", "--data", str(args.data), "--recipe", args.recipe,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=launch_env(args.threads))
    return float(out.stdout.split()[-1])


def engine(args: argparse.Namespace, batch: int, workers: int) -> dict[str, float]:
    """Images/s of `python -m vaeforge.train` between step `warmup` and the end, from its own TensorBoard
    wall times; its mean data-wait fraction; and its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "vaeforge.train", f"recipe={args.recipe}", f"data.shards={args.data}",
               f"run_dir={run_dir}", f"trainer.max_steps={args.steps + args.warmup}",
               f"trainer.log_every={args.warmup}", "trainer.val_every=0", "trainer.image_every=0",
               "trainer.checkpoint_every=0", "trainer.progress=false", f"data.num_workers={workers}",
               "optim.warmup_steps=0"]
        peak = peak_rss_mb(cmd, launch_env(args.threads))
        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        loss = {e.step: e.wall_time for e in acc.Scalars("train/loss")}
        waits = [e.value for e in acc.Scalars("perf/data_wait_fraction") if e.step > args.warmup]
        seconds = loss[args.steps + args.warmup] - loss[args.warmup]
        return {"images_per_sec": args.steps * batch / seconds, "data_wait": sum(waits) / len(waits),
                "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", default="lfw_unet")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=7, help="engine runs per worker setting, each between two "
                        "bare runs; the ratio is the median over rounds of engine / mean of its two bare runs")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # run the bare loop, print images/s
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config({"recipe": args.recipe})
    if args.bare:
        batches = preload(cfg, args.data, args.steps + args.warmup)
        print(bare_loop(cfg, int(read_manifest(args.data)["image_size"]), batches, args.warmup))
        return
    rates, runs = [bare(args)], {w: [] for w in args.workers}
    for _ in range(args.rounds):  # this machine's speed drifts by 15% over minutes: pair each run with its neighbours
        for workers in args.workers:
            runs[workers].append(engine(args, cfg.data.batch_size, workers))
        rates.append(bare(args))
    print(f"recipe {args.recipe}, batch {cfg.data.batch_size}, {args.threads} threads, {args.steps} timed steps, "
          f"{args.rounds} rounds")
    print("| loop | loader workers | images/s (median; each round) | ratio to bare (median; each round) "
          "| data-wait fraction | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    each = ", ".join(f"{b:.0f}" for b in rates)
    print(f"| bare PyTorch | (preloaded) | {statistics.median(rates):.1f} ({each}) | 1 | - | - |")
    for workers, results in runs.items():
        rate = [r["images_per_sec"] for r in results]
        ratio = [r / ((rates[i] + rates[i + 1]) / 2) for i, r in enumerate(rate)]
        wait = statistics.median(r["data_wait"] for r in results)
        peak = max(r["peak_rss_mb"] for r in results)
        print(f"| vaeforge.train | {workers} | {statistics.median(rate):.1f} ({', '.join(f'{r:.0f}' for r in rate)}) "
              f"| **{statistics.median(ratio):.3f}** ({', '.join(f'{r:.2f}' for r in ratio)}) | {wait:.3f} "
              f"| {peak:.0f} |")


if __name__ == "__main__":
    main()
