"""``denoise``: restore noisy photos with a model trained on corrupted inputs and clean targets
(``recipes/lfw_denoise.yaml``).

Given clean images, the task corrupts them itself with ``noise=`` (``gaussian:0.2``, ``salt_pepper:0.1``,
``jpeg:10``, ``mask:0.2``, or a range like ``gaussian:0.1-0.3``: the training corruptions, seeded by ``seed=``)
and reports PSNR against the clean images before and after denoising. With ``noise=none`` the inputs are taken
as already noisy: there is no clean reference, so no PSNR.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vaeforge.api import TaskContext, at_least, corrupt, describe_corruption, parse_corruption, psnr, register_task

NO_REFERENCE = "noise=none: inputs taken as already noisy, no clean reference to score against"


@dataclass
class DenoiseConfig:
    noise: str = "gaussian:0.2"  # corruption applied to the clean inputs; none: the inputs are already noisy
    grid_columns: int = at_least(1, 4)  # images per grid row (each as clean, noisy, denoised)


def _psnr(names: list[str], images: torch.Tensor, clean: torch.Tensor) -> tuple[dict[str, float], float]:
    """PSNR per image (by name) and the mean."""
    values = psnr(images, clean)
    return {n: round(float(v), 3) for n, v in zip(names, values)}, round(float(values.mean()), 3)


def _scores(names: list[str], clean: torch.Tensor | None, noisy: torch.Tensor, denoised: torch.Tensor) -> dict:
    if clean is None:
        return {"psnr_noisy": None, "psnr_denoised": None, "mean_psnr_noisy": None, "mean_psnr_denoised": None,
                "note": NO_REFERENCE}
    (per_noisy, mean_noisy), (per_denoised, mean_denoised) = _psnr(names, noisy, clean), _psnr(names, denoised, clean)
    return {"psnr_noisy": per_noisy, "psnr_denoised": per_denoised, "mean_psnr_noisy": mean_noisy,
            "mean_psnr_denoised": mean_denoised}


@register_task("denoise", config=DenoiseConfig)
def denoise(ctx: TaskContext, cfg: DenoiseConfig) -> dict:
    spec = parse_corruption(cfg.noise)
    items = ctx.inputs()
    names = [Path(name).with_suffix(".png").name for name, _ in items]
    x = torch.stack([im for _, im in items])
    clean = x if spec.kind != "none" else None
    noisy = corrupt(x, spec, ctx.generator())
    denoised = ctx.model.reconstruct(noisy).cpu()
    shown = {"clean": x, "noisy": noisy} if clean is not None else {"input": x}
    shown["denoised"] = denoised
    for name, image in zip(names, denoised):
        ctx.save_image(f"{Path(name).stem}_denoised.png", image)
    if clean is not None:
        for name, image in zip(names, noisy):
            ctx.save_image(f"{Path(name).stem}_noisy.png", image)
    columns = min(cfg.grid_columns, len(names))
    ctx.save_grid("grid.png", torch.stack(list(shown.values()), 1).flatten(0, 1), nrow=len(shown) * columns,
                  columns=list(shown) * columns)
    return {"output": str(ctx.output), "files": len(names) * (len(shown) - 1) + 1,
            "noise": describe_corruption(spec), "images": names, **_scores(names, clean, noisy, denoised)}
