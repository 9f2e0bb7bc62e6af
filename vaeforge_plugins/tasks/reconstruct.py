"""``reconstruct``: each input image -> its reconstruction (posterior mean, or a posterior sample), one PNG per
input under the same file name, a side-by-side grid, and PSNR per image."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vaeforge.api import TaskContext, at_least, psnr, register_task


@dataclass
class ReconstructConfig:
    sample: bool = False  # decode a posterior sample instead of the mean
    grid_columns: int = at_least(1, 8)  # input/reconstruction pairs per grid row


@register_task("reconstruct", config=ReconstructConfig)
def reconstruct(ctx: TaskContext, cfg: ReconstructConfig) -> dict:
    items = ctx.inputs()
    names = [Path(name).with_suffix(".png").name for name, _ in items]
    x = torch.stack([im for _, im in items])
    recon = ctx.model.reconstruct(x, sample=cfg.sample, generator=ctx.generator()).cpu()
    for name, image in zip(names, recon):
        ctx.save_image(name, image)
    scores = psnr(recon, x)
    rows = [torch.stack([x[i], recon[i]]) for i in range(len(names))]
    ctx.save_grid("grid.png", torch.cat(rows), nrow=2 * cfg.grid_columns)
    return {
        "output": str(ctx.output),
        "files": len(names) + 1,
        "images": names,
        "psnr": {n: round(float(s), 3) for n, s in zip(names, scores)},
        "mean_psnr": round(float(scores.mean()), 3),
    }
