"""Engine overhead: images/s of `vaeforge.train` vs a bare PyTorch loop with the same model, batch, optimizer,
loss and threads, measured in one run; plus the data-wait fraction and peak memory of the training process.

    python benchmarks/overhead.py --data data/lfw64 [--recipe lfw_unet] [--steps 60] [--threads 2] [--rounds 15]
        [--set trainer.channels_last=on trainer.compile=on ...]

The bare loop trains on batches decoded into memory beforehand (no loader at all), so the ratio charges the
engine with everything it adds: streaming and decoding, Accelerate, EMA, logging. Two designs, both printed:
separate processes in alternating rounds, and both loops in one process in alternating blocks of steps (this
machine's speed drifts by 10-20% over minutes; within a block pair it cancels). ``--set`` overrides apply to both
loops (the bare loop resolves precision, memory format and compilation from the same config as the engine).
"""
from __future__ import annotations

import argparse
import json
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
from common import recipe_parser
from memory import peak_rss_mb
from vaeforge.cli.args import parse_overrides
from vaeforge.data.stream import eval_batches
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.train.callbacks import Callback
from vaeforge.train.__main__ import resolve_config  # the recipe as training resolves it (by_precision)


def engine_overrides(args: argparse.Namespace) -> list[str]:
    """Both designs: TensorBoard scalars every ``--warmup`` steps (more often than the recipes log; the separate-
    process design times the engine by them), no validation, grids or interim checkpoints, no lr warm-up."""
    return [f"trainer.log_every={args.warmup}", "trainer.val_every=0", "trainer.image_every=0",
            "trainer.checkpoint_every=0", "trainer.progress=false", "optim.warmup_steps=0", *args.set]


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


def listed(values: list[float], digits: int, bold: bool = False) -> str:
    """A table cell for a measured series: its median (``digits`` decimals), then each value (one fewer)."""
    median = f"{statistics.median(values):.{digits}f}"
    each = ", ".join(f"{v:.{max(digits - 1, 0)}f}" for v in values)
    return f"{f'**{median}**' if bold else median} ({each})"


def launch_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}


def child(args: argparse.Namespace, flag: str) -> str:
    """This script's ``flag`` mode in a fresh process started like the engine's (same interpreter, environment
    and threads); its standard output."""
    cmd = [sys.executable, __file__, flag, "--data", str(args.data), "--recipe", args.recipe, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads), "--blocks",
           str(args.blocks), "--block", str(args.block), "--set", *args.set]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=launch_env(args.threads)).stdout


def bare(args: argparse.Namespace) -> float:
    """Images/s of the bare loop in a fresh process, so that neither loop runs in a process warmed up by the
    other."""
    return float(child(args, "--bare").split()[-1])


def engine(args: argparse.Namespace, batch: int, workers: int) -> dict[str, float]:
    """Images/s of `python -m vaeforge.train` between step `warmup` and the end, from its own TensorBoard
    wall times; its mean data-wait fraction; and its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "vaeforge.train", f"recipe={args.recipe}", f"data.shards={args.data}",
               f"run_dir={run_dir}", f"trainer.max_steps={args.steps + args.warmup}", *engine_overrides(args),
               f"data.num_workers={workers}"]
        peak = peak_rss_mb(cmd, launch_env(args.threads))
        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        loss = {e.step: e.wall_time for e in acc.Scalars("train/loss")}
        waits = [e.value for e in acc.Scalars("perf/data_wait_fraction") if e.step > args.warmup]
        seconds = loss[args.steps + args.warmup] - loss[args.warmup]
        return {"images_per_sec": args.steps * batch / seconds, "data_wait": sum(waits) / len(waits),
                "peak_rss_mb": peak}


class BareBlocks(Callback):
    """After every ``--block`` engine steps: the engine block's images/s, then a bare block on preloaded batches,
    timed on its own (both appended to ``rates``; ``*_busy``: on the process's CPU time x threads, which other
    work on a shared machine distorts far less)."""

    def __init__(self, args: argparse.Namespace, batch: int, total: int, bare: BareStep,
                 batches: list[torch.Tensor], rates: dict[str, list[float]]) -> None:
        self.args, self.batch, self.total, self.bare, self.batches, self.rates = args, batch, total, bare, batches, rates
        self.since = self.since_cpu = 0.0

    def on_step_end(self, trainer, result) -> None:
        done, a = trainer.state.step, self.args
        if done < a.warmup or (done - a.warmup) % a.block:
            return
        now, now_cpu, images = time.perf_counter(), time.process_time(), a.block * self.batch
        if done > a.warmup:
            self.rates["engine"].append(images / (now - self.since))
            self.rates["engine_busy"].append(images * a.threads / (now_cpu - self.since_cpu))
        if done == self.total:
            return
        for i, x in enumerate(self.batches):
            self.bare.step(x, i)
        self.rates["bare"].append(images / (time.perf_counter() - now))
        self.rates["bare_busy"].append(images * a.threads / (time.process_time() - now_cpu))
        self.since, self.since_cpu = time.perf_counter(), time.process_time()


def interleaved(args: argparse.Namespace) -> dict[str, list[float]]:
    """Engine and bare loop in one process, alternating blocks of ``--block`` steps: the real ``Trainer.fit``
    (its loader decoding in-process, so that all of its data work is charged to it), and after each engine block
    a bare block on preloaded batches, timed on its own. Images/s per block of each."""
    from vaeforge.train.trainer import Trainer

    total = args.warmup + args.blocks * args.block
    with tempfile.TemporaryDirectory() as tmp:
        argv = [f"recipe={args.recipe}", f"data.shards={args.data}", f"run_dir={tmp}/run", f"trainer.max_steps={total}",
                *engine_overrides(args), "data.num_workers=0"]
        cfg = resolve_config(parse_overrides(argv))
        batch = cfg.data.batch_size
        batches = preload(cfg, args.data, args.block)
        bare = BareStep(cfg, int(read_manifest(args.data)["image_size"]))
        for i in range(args.warmup):
            bare.step(batches[i % args.block], i)
        rates: dict[str, list[float]] = {"engine": [], "bare": [], "engine_busy": [], "bare_busy": []}
        trainer = Trainer(cfg, callbacks=[BareBlocks(args, batch, total, bare, batches, rates)])
        try:
            trainer.fit()
        finally:
            trainer.close()
    return rates


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=15, help="engine runs per worker setting, each between two "
                        "bare runs; the ratio is the median over rounds of engine / mean of its two bare runs")
    parser.add_argument("--blocks", type=int, default=36, help="engine/bare block pairs in the one-process design")
    parser.add_argument("--block", type=int, default=10, help="steps per block in the one-process design (one "
                        "TensorBoard log and one lfw_unet EMA update per 10 engine steps)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for both loops")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # run the bare loop, print images/s
    parser.add_argument("--interleaved", action="store_true", help=argparse.SUPPRESS)  # run it, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_config({"recipe": args.recipe, **parse_overrides(args.set)})
    if args.bare:
        batches = preload(cfg, args.data, args.steps + args.warmup)
        print(bare_loop(cfg, int(read_manifest(args.data)["image_size"]), batches, args.warmup))
        return
    if args.interleaved:
        print(json.dumps(interleaved(args)))
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
    print(f"| bare PyTorch | (preloaded) | {listed(rates, 1)} | 1 | - | - |")
    for workers, results in runs.items():
        rate = [r["images_per_sec"] for r in results]
        ratio = [r / ((rates[i] + rates[i + 1]) / 2) for i, r in enumerate(rate)]
        wait = statistics.median(r["data_wait"] for r in results)
        peak = max(r["peak_rss_mb"] for r in results)
        print(f"| vaeforge.train | {workers} | {listed(rate, 1)} | {listed(ratio, 3, bold=True)} | {wait:.3f} "
              f"| {peak:.0f} |")

    blocks = json.loads(child(args, "--interleaved").splitlines()[-1])
    ratio = [e / b for e, b in zip(blocks["engine"], blocks["bare"])]
    print(f"\nOne process, {args.blocks} pairs of {args.block}-step blocks (engine decoding in-process, 0 workers)")
    print("| loop | images/s (median; each block) | ratio to bare (median; each block pair) |")
    print("|---|---|---|")
    print(f"| bare PyTorch | {listed(blocks['bare'], 1)} | 1 |")
    print(f"| vaeforge.train | {listed(blocks['engine'], 1)} | {listed(ratio, 3, bold=True)} |")
    busy = [e / b for e, b in zip(blocks["engine_busy"], blocks["bare_busy"])]
    print(f"On CPU time (images per CPU-second x threads): engine / bare {listed(busy, 3, bold=True)}")

if __name__ == "__main__":
    main()
