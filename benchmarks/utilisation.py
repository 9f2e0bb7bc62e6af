"""Utilisation: how much of the machine a recipe's training step uses, eager, channels-last, compiled and both.

    python benchmarks/utilisation.py --data data/lfw64 [--recipe lfw_unet] [--threads 2] [--blocks 12] [--block 6]
        [--set trainer.mixed_precision=no ...] [--overhead-blocks 12]

In one process: the matmul peak (2048^3, best of several, fp32 and, where the CPU has native bf16, bf16), the
FLOPs of one training image (torch.utils.flop_counter over the eager step: forward and backward of the model and
the loss terms), then the bare step (benchmarks/bare_step.py) in four variants, alternating blocks of
``--block`` steps (drift cancels within a round): images/s, the ratio to eager (median of the rounds' ratios)
and MFU (FLOPs per image x images/s / the matmul peak in the training precision), each on the wall clock and on
the process's CPU time ("busy": images per CPU-second x threads, what the step does while it runs, which other
work on a shared machine distorts far less; with one thread it is exact). Compile start-up is timed in two
child processes sharing a fresh inductor cache (cold, then warm): the first step of the recipe's compiled
variant minus a normal step. Last, overhead.py's one-process design (engine vs bare blocks) with the options the
recipe resolves to here set on both sides. ``--set`` overrides apply to everything (e.g. fp32 on a bf16 CPU).
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

import torch
from torch.utils.flop_counter import FlopCounterMode

from bare_step import BareStep
from common import machine, recipe_parser
from overhead import listed
from vaeforge.cli.args import parse_overrides
from vaeforge.data.manifest import read_manifest
from vaeforge.train import speed as speeds
from vaeforge.train.distributed import Launch, native_bf16, resolve_precision
from vaeforge.train.__main__ import resolve_config  # the recipe as training resolves it (by_precision)

VARIANTS = {"eager": ("off", "off"), "channels_last": ("on", "off"), "compiled": ("off", "on"), "both": ("on", "on")}
PEAK_SIZE = 2048


def matmul_peak(dtype: torch.dtype, repeats: int = 10) -> float:
    """GFLOP/s of the fastest of ``repeats`` square matmuls of PEAK_SIZE in ``dtype``."""
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_SIZE**3 / best / 1e9


def variant_config(args: argparse.Namespace, name: str):
    layout, compiled = VARIANTS[name]
    return resolve_config({"recipe": args.recipe, **parse_overrides(args.set), "trainer.channels_last": layout,
                        "trainer.compile": compiled})


def flops_per_image(args: argparse.Namespace, size: int) -> float:
    """Forward and backward FLOPs of one training image (the eager step; the optimizer's are not counted)."""
    cfg = variant_config(args, "eager")
    bare = BareStep(cfg, size)
    x = torch.rand(cfg.data.batch_size, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        bare.step(x, 0)
    return counter.get_total_flops() / cfg.data.batch_size


def startup(args: argparse.Namespace, size: int, name: str) -> dict[str, float]:
    """Wall and CPU seconds of variant ``name``'s first step beyond the median of the next five (a child
    process)."""
    cfg = variant_config(args, name)
    bare = BareStep(cfg, size)
    x = torch.rand(cfg.data.batch_size, 3, size, size)
    wall, cpu = [], []
    for i in range(6):
        start, start_cpu = time.perf_counter(), time.process_time()
        bare.step(x, i)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall[0] - statistics.median(wall[1:]), "cpu": cpu[0] - statistics.median(cpu[1:])}


def child_startup(args: argparse.Namespace, name: str, cache: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--startup", name, "--data", str(args.data), "--recipe", args.recipe,
           "--threads", str(args.threads), "--set", *args.set]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.splitlines()[-1])


def interleaved(args: argparse.Namespace, size: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Images/s of each variant per block on the wall clock and busy (CPU time / threads), the variants taking
    turns block by block."""
    steps, batch = {}, 0
    for name in VARIANTS:
        cfg = variant_config(args, name)
        batch = cfg.data.batch_size
        steps[name] = BareStep(cfg, size)
    batches = [torch.rand(batch, 3, size, size) for _ in range(args.block)]
    for bare in steps.values():  # warm-up: compiles, fills the allocator's caches
        for i in range(3):
            bare.step(batches[i % args.block], i)
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    busy: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.blocks):
        for name, bare in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for i, x in enumerate(batches):
                bare.step(x, 3 + i)
            wall[name].append(args.block * batch / (time.perf_counter() - start))
            busy[name].append(args.block * batch * args.threads / (time.process_time() - start_cpu))
    return wall, busy


def engine_ratio(args: argparse.Namespace, layout: str, compiled: str) -> dict[str, list[float]]:
    """overhead.py's one-process design with the given options on both sides: engine / bare per block pair, on
    the wall clock and busy."""
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "overhead.py"), "--interleaved", "--data", str(args.data), "--recipe",
           args.recipe, "--threads", str(args.threads), "--blocks", str(args.overhead_blocks), "--block", "10",
           "--set", *args.set, f"trainer.channels_last={layout}", f"trainer.compile={compiled}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    blocks = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                        .splitlines()[-1])
    return {clock: [e / b for e, b in zip(blocks[f"engine{suffix}"], blocks[f"bare{suffix}"])]
            for clock, suffix in (("wall", ""), ("busy", "_busy"))}


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=12, help="rounds of blocks, one block per variant each")
    parser.add_argument("--block", type=int, default=6, help="steps per block")
    parser.add_argument("--overhead-blocks", type=int, default=12, help="engine/bare block pairs (0: skip)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--startup", help=argparse.SUPPRESS)  # time this variant's first steps, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = int(read_manifest(args.data)["image_size"])
    if args.startup:
        print(json.dumps(startup(args, size, args.startup)))
        return

    cfg = resolve_config({"recipe": args.recipe, **parse_overrides(args.set)})
    precision = resolve_precision(cfg.trainer.mixed_precision, Launch.from_env())
    recipe = speeds.resolve(cfg.trainer, precision, None)
    chosen = {(False, False): "eager", (True, False): "channels_last", (False, True): "compiled",
              (True, True): "both"}[recipe.channels_last, recipe.compile_mode is not None]
    peaks = {"fp32": matmul_peak(torch.float32)}
    if native_bf16():
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    flops = flops_per_image(args, size)
    compiled_name = chosen if recipe.compile_mode is not None else "both"
    with tempfile.TemporaryDirectory() as cache:
        cold = child_startup(args, compiled_name, cache)
        warm = child_startup(args, compiled_name, cache)
    wall, busy = interleaved(args, size)
    peaks_after = {"fp32": matmul_peak(torch.float32)}

    print(machine())
    print(f"recipe {args.recipe}, batch {cfg.data.batch_size}, {args.threads} threads, precision {precision}, "
          f"device kind {speeds.device_kind()}, overrides {args.set or 'none'}")
    print(f"matmul peak {PEAK_SIZE}^3: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
          + f" (fp32 again after the blocks: {peaks_after['fp32']:.1f})")
    print(f"training FLOPs per image (forward + backward): {flops / 1e9:.3f} GFLOP")
    print(f"compile start-up of '{compiled_name}' (first step beyond a normal one; wall / CPU seconds): cold "
          f"cache {cold['wall']:.1f} / {cold['cpu']:.1f} s, warm cache {warm['wall']:.1f} / {warm['cpu']:.1f} s")
    print(f"the recipe's defaults resolve to: {chosen}\n")
    print(f"| variant | images/s, wall (median; each block) | ratio to eager | MFU vs {precision} peak "
          "| busy images/s (median) | ratio to eager | busy MFU |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        cells = []
        for series in (wall, busy):
            ratio = statistics.median(r / e for r, e in zip(series[name], series["eager"]))
            mfu = flops * statistics.median(series[name]) / (peak * 1e9)
            shown = listed(series[name], 1) if series is wall else f"{statistics.median(series[name]):.1f}"
            cells += [shown, f"**{ratio:.3f}**", f"{mfu:.1%}"]
        mark = " (recipe default)" if name == chosen else ""
        print(f"| {name}{mark} | " + " | ".join(cells) + " |")
    if args.overhead_blocks:
        layout, compiled = VARIANTS[chosen]
        ratios = engine_ratio(args, layout, compiled)
        print(f"\nengine / bare, one process, {args.overhead_blocks} pairs of 10-step blocks, channels_last={layout} "
              f"compile={compiled} on both sides: wall {listed(ratios['wall'], 3, bold=True)}; busy "
              f"{listed(ratios['busy'], 3, bold=True)}")


if __name__ == "__main__":
    main()
