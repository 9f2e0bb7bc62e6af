"""Peak resident memory of training a recipe (batch 64 by default) and of each task on the trained run.

    python benchmarks/memory.py --data data/lfw64 [--recipe lfw_unet] [--steps 20]

Each command runs in its own process; its peak RSS is read from the kernel (getrusage of the child, which
covers its loader workers only if they outgrow it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import recipe_parser

TASKS = [
    ["task=reconstruct", "input=val", "limit=64"],
    ["task=sample", "n=64"],
    ["task=interpolate", "input=val", "limit=4"],
    ["task=denoise", "input=val", "limit=16"],
    ["task=edit", "attribute=Smiling", "input=val", "limit=4"],
    ["task=evaluate"],
]


def peak_rss_mb(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run a command in a fresh process (environment ``env``, default this one's) and return its peak RSS in MB
    (its own, not earlier children's)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL,"
            " stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True,
                         env=env or {**os.environ, "TQDM_DISABLE": "1"})
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train = [sys.executable, "-m", "vaeforge.train", f"recipe={args.recipe}", f"data.shards={args.data}",
                 f"run_dir={run_dir}", f"trainer.max_steps={args.steps}", f"data.batch_size={args.batch}",
                 "trainer.val_every=0", "trainer.image_every=0", "trainer.progress=false"]
        print("| command | peak RSS (MB) |")
        print("|---|---|")
        print(f"| train {args.recipe}, batch {args.batch} | {peak_rss_mb(train):.0f} |")
        for task in TASKS:
            cmd = [sys.executable, "-m", "vaeforge.run", f"run_dir={run_dir}", *task]
            try:
                print(f"| {' '.join(task)} | {peak_rss_mb(cmd):.0f} |")
            except subprocess.CalledProcessError:
                print(f"| {' '.join(task)} | (failed: task missing or needs other options) |")


if __name__ == "__main__":
    main()
