"""Start-up of a vaeforge process against a bare ``import torch``: every training, task and test pays it.

Three commands, each run ``--repeats`` times in a fresh interpreter, interleaved (median wall seconds):
``import torch`` (the floor: any PyTorch program pays it), vaeforge's training code with every plugin
discovered, and a one-step training of a tiny model on prepared shards through the real CLI. It also names
the heavy packages the one-step training imports (a package there that the run does not use is start-up
lost). Prints the ratios to the bare import.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torchvision", "timm", "deepspeed", "transformers", "wandb", "mlflow", "scipy", "einops")
IMPORTS = ("import vaeforge.train.trainer, vaeforge.train.__main__; "
           "from vaeforge.registry import REGISTRY; REGISTRY.discover()")
TINY = ["recipe=lfw_unet", "model.latent_dim=16", "model.backbone.args.widths=[8,16,32]", "losses.perceptual.weight=0",
        "trainer.mixed_precision=no", "trainer.compile=off", "trainer.channels_last=off", "data.batch_size=8",
        "data.num_workers=0", "trainer.val_every=0", "trainer.image_every=0", "trainer.progress=false",
        "trainer.max_steps=1"]
LOADED = ("import sys, runpy; sys.argv = ['vaeforge.train', *sys.argv[1:]]\n"
          "try:\n    runpy.run_module('vaeforge.train', run_name='__main__')\n"
          "finally:\n    print('HEAVY', *[m for m in %r if m in sys.modules], file=sys.stderr)" % (HEAVY,))


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared shards (python -m vaeforge.prepare)")
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    times: dict[str, list[float]] = {"import torch": [], "vaeforge imports": [], "1-step training": []}
    heavy: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            times["import torch"].append(timed([sys.executable, "-c", "import torch"])[0])
            times["vaeforge imports"].append(timed([sys.executable, "-c", IMPORTS])[0])
            seconds, err = timed([sys.executable, "-c", LOADED, *TINY, f"data.shards={a.data}",
                                  f"run_dir={Path(tmp) / str(i)}"])
            times["1-step training"].append(seconds)
            heavy = next(line for line in err.splitlines() if line.startswith("HEAVY")).split()[1:]
    floor = statistics.median(times["import torch"])
    print("| process | median s | x import torch |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / floor:.2f} |")
    print(f"heavy packages the 1-step training imported: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
