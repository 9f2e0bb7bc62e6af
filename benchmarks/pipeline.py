"""Input pipeline and step-time scaling.

    python benchmarks/pipeline.py --data data/lfw64 [--recipe lfw_unet] [--batches 60]

1. Decoded images/s of the WebDataset loader with 0, 1 and 2 workers, against the rate at which a training
   step of the recipe consumes images (bare_step.BareStep: its model, losses, precision, AdamW; preloaded):
   the loader must be faster than training for the data-wait fraction to stay low.
2. How the step time of the recipe's model grows with image size (32, 64, 128) and batch size.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from bare_step import BareStep
from common import recipe_parser
from vaeforge.data.stream import StreamSpec, train_loader
from vaeforge.data.manifest import read_manifest, shard_paths
from vaeforge.train.__main__ import resolve_config  # the recipe as training resolves it (by_precision)


def loader_rate(data: Path, batch: int, batches: int, workers: int) -> float:
    manifest = read_manifest(data)
    spec = StreamSpec(tuple(shard_paths(data, manifest, "train")), batch, batches, 0, 1, 0, 0, 2000,
                      image_size=int(manifest["image_size"]))
    start = time.perf_counter()
    n = sum(b["image"].shape[0] for b in train_loader(spec, workers))
    return n / (time.perf_counter() - start)


def step_seconds(cfg, size: int, batch: int, steps: int = 5) -> float:
    """Mean seconds of the recipe's training step (bare_step.BareStep, after one warm-up step) on random images."""
    bare = BareStep(cfg, size)
    x = torch.rand(batch, 3, size, size)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        bare.step(x, i)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_config({"recipe": args.recipe})
    batch = cfg.data.batch_size
    train_rate = batch / step_seconds(cfg, int(read_manifest(args.data)["image_size"]), batch)
    print(f"recipe {args.recipe}: training consumes {train_rate:.1f} images/s ({args.threads} threads, batch {batch})")
    print("| loader workers | decoded images/s | loader / training |")
    print("|---|---|---|")
    for workers in (0, 1, 2):
        rate = loader_rate(args.data, batch, args.batches, workers)
        print(f"| {workers} | {rate:.0f} | {rate / train_rate:.1f}x |")
    print("\n| image size | batch | step (s) | images/s |")
    print("|---|---|---|---|")
    for size in (32, 64, 128):
        for b in (16, 32, 64):
            seconds = step_seconds(cfg, size, b)
            print(f"| {size} | {b} | {seconds:.3f} | {b / seconds:.1f} |")


if __name__ == "__main__":
    main()
