"""Engine overhead: images/s of `vaeforge.train` vs a bare PyTorch loop with the same model, batch, optimizer,
loss and threads, measured in one run; plus the data-wait fraction and peak memory of the training process.

    python benchmarks/overhead.py --data data/lfw64 [--recipe lfw_unet] [--steps 100] [--threads 2] [--repeats 3]

The bare loop trains on batches decoded into memory beforehand (no loader at all), so the ratio charges the
engine with everything it adds: streaming and decoding, Accelerate, EMA, logging.
"""
from __future__ import annotations

import argparse
import os
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bare_step import BareStep
from vaeforge.config import load_config
from vaeforge.data.loader import eval_batches
from vaeforge.data.manifest import read_manifest, shard_paths


def bare_loop(cfg, data: Path, steps: int, warmup: int) -> float:
    """Images/s of a hand-written loop (bare_step.BareStep) on preloaded batches."""
    manifest = read_manifest(data)
    batch = cfg.data.batch_size
    batches = []
    for b in eval_batches(shard_paths(data, manifest, "train"), batch, 0, 1):
        if b["image"].shape[0] == batch:
            batches.append(b["image"])
        if len(batches) == steps + warmup:
            break
    bare = BareStep(cfg, int(manifest["image_size"]))
    for i, images in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        bare.step(images.float() / 255.0, i)
    return steps * batch / (time.perf_counter() - start)


def engine(recipe: str, data: Path, steps: int, warmup: int, threads: int, workers: int) -> dict[str, float]:
    """Images/s of `python -m vaeforge.train` between step `warmup` and the end, from its own TensorBoard
    wall times; its mean data-wait fraction; and the peak RSS of the process tree."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "vaeforge.train", f"recipe={recipe}", f"data.shards={data}",
               f"run_dir={run_dir}", f"trainer.max_steps={steps + warmup}", f"trainer.log_every={warmup}",
               "trainer.val_every=0", "trainer.image_every=0", "trainer.checkpoint_every=0", "trainer.progress=false",
               f"data.num_workers={workers}", "optim.warmup_steps=0"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        loss = {e.step: e.wall_time for e in acc.Scalars("train/loss")}
        waits = [e.value for e in acc.Scalars("perf/data_wait_fraction") if e.step > warmup]
        batch = load_config({"recipe": recipe}).data.batch_size
        seconds = loss[steps + warmup] - loss[warmup]
        return {"images_per_sec": steps * batch / seconds, "data_wait": sum(waits) / len(waits),
                "peak_rss_mb": max(peak, before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--recipe", default="lfw_unet")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=3, help="alternating bare / engine rounds; medians reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config({"recipe": args.recipe})
    bare, runs = [], {w: [] for w in args.workers}
    for _ in range(args.repeats):  # alternate, so a slow phase of the machine hits both loops alike
        bare.append(bare_loop(cfg, args.data, args.steps, args.warmup))
        for workers in args.workers:
            runs[workers].append(engine(args.recipe, args.data, args.steps, args.warmup, args.threads, workers))
    base = statistics.median(bare)
    print(f"recipe {args.recipe}, batch {cfg.data.batch_size}, {args.threads} threads, {args.steps} timed steps, "
          f"median of {args.repeats} alternating rounds")
    print("| loop | loader workers | images/s | ratio to bare | data-wait fraction | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    print(f"| bare PyTorch | (preloaded) | {base:.1f} (runs: {', '.join(f'{b:.0f}' for b in bare)}) | 1.00 | - | - |")
    for workers, results in runs.items():
        rate = statistics.median(r["images_per_sec"] for r in results)
        wait = statistics.median(r["data_wait"] for r in results)
        peak = max(r["peak_rss_mb"] for r in results)
        each = ", ".join(f"{r['images_per_sec']:.0f}" for r in results)
        print(f"| vaeforge.train | {workers} | {rate:.1f} (runs: {each}) | {rate / base:.3f} | {wait:.3f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
