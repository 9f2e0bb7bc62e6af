"""Engine overhead: images/s of `vaeforge.train` vs a bare PyTorch loop with the same model, batch, optimizer,
loss and threads, measured in one run; plus the data-wait fraction and peak memory of the training process.

    python benchmarks/overhead.py --data data/lfw64 [--recipe lfw_unet] [--steps 60] [--threads 2]

The bare loop trains on batches decoded into memory beforehand (no loader at all), so the ratio charges the
engine with everything it adds: streaming and decoding, Accelerate, EMA, logging.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaeforge.config import load_config
from vaeforge.data.loader import eval_batches
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.metrics import kl_per_dim
from vaeforge.model import ImageSpec, build_model


def bare_loop(cfg, data: Path, steps: int, warmup: int) -> float:
    """Images/s of a hand-written loop: AdamW, MSE-sum + beta KL, grad clipping; batches preloaded."""
    manifest = read_manifest(data)
    batch = cfg.data.batch_size
    batches = []
    for b in eval_batches(shard_paths(data, manifest, "train"), batch, 0, 1):
        if b["image"].shape[0] == batch:
            batches.append(b["image"])
        if len(batches) == steps + warmup:
            break
    torch.manual_seed(0)
    model = build_model(cfg.model, ImageSpec(int(manifest["image_size"])))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    for i, images in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        x = images.float() / 255.0
        out = model(x)
        recon = (torch.sigmoid(out.logits) - x).square().flatten(1).sum(1).mean()
        loss = recon + kl_per_dim(out.mu, out.logvar).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
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
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config({"recipe": args.recipe})
    bare = bare_loop(cfg, args.data, args.steps, args.warmup)
    print(f"recipe {args.recipe}, batch {cfg.data.batch_size}, {args.threads} threads, {args.steps} timed steps")
    print("| loop | loader workers | images/s | ratio to bare | data-wait fraction | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    print(f"| bare PyTorch | (preloaded) | {bare:.1f} | 1.00 | - | - |")
    for workers in args.workers:
        r = engine(args.recipe, args.data, args.steps, args.warmup, args.threads, workers)
        print(f"| vaeforge.train | {workers} | {r['images_per_sec']:.1f} | {r['images_per_sec'] / bare:.3f} "
              f"| {r['data_wait']:.3f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
