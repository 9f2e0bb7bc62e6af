"""``interpolate``: walks in latent space between faces, and a weighted mix of several faces.

Inputs are taken in consecutive pairs (1st with 2nd, 3rd with 4th, ...). For each pair the posterior means are
joined by ``steps`` steps (``mode=linear`` or ``slerp``) and decoded: ``steps + 1`` frames whose first and last are
the reconstructions of the two inputs. With ``mix=[w1, w2, ...]`` the first ``len(mix)`` inputs are also mixed
into one face decoded from the weighted mean of their posterior means (the option is ``mix``: ``weights`` is
the common option choosing EMA or raw model weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaeforge.api import DataError, TaskContext, at_least, choice, register_task


@dataclass
class InterpolateConfig:
    steps: int = at_least(1, 8)  # steps between the two endpoints: steps + 1 frames a pair
    mode: str = choice("linear", ("linear", "slerp"))  # a straight line between the latents or the arc (slerp)
    mix: list[float] = field(default_factory=list)  # weights of a face mix of the first len(mix) inputs ([]: none)


def _stem(name: str) -> str:
    return Path(name).stem


def _pairs(ctx: TaskContext, cfg: InterpolateConfig, items: list[tuple[str, torch.Tensor]]) -> dict:
    """One strip PNG per pair (the frames) and a grid with a row per pair: input, frames, input."""
    a, b = items[0:-1:2], items[1::2]
    xa, xb = torch.stack([im for _, im in a]), torch.stack([im for _, im in b])
    frames = ctx.model.interpolate(xa, xb, cfg.steps, cfg.mode).cpu()
    names = [f"pair_{i:03d}_{_stem(na)}_{_stem(nb)}.png" for i, ((na, _), (nb, _)) in enumerate(zip(a, b))]
    for name, row in zip(names, frames):
        ctx.save_grid(name, [list(row)])
    rows = [[xa[i], *frames[i], xb[i]] for i in range(len(names))]
    captions = ["input", *(f"t={t:.2f}" for t in torch.linspace(0, 1, cfg.steps + 1).tolist()), "input"]
    ctx.save_grid("grid.png", rows, columns=captions)
    return {"pairs": [[na, nb] for (na, _), (nb, _) in zip(a, b)], "pair_files": names,
            "unpaired": items[-1][0] if len(items) % 2 else None}


def _mix(ctx: TaskContext, weights: list[float], items: list[tuple[str, torch.Tensor]]) -> dict:
    """``mix.png`` (the mixed face) and ``mix_grid.png`` (the inputs, then the mix)."""
    if len(weights) > len(items):
        raise DataError(f"interpolate: mix has {len(weights)} weights but there are only {len(items)} input images")
    x = torch.stack([im for _, im in items[: len(weights)]])
    mixed = ctx.model.mix(x, weights).cpu()
    ctx.save_image("mix.png", mixed[0])
    ctx.save_grid("mix_grid.png", [[*x, mixed[0]]], columns=[*(f"w={w:g}" for w in weights), "mix"])
    return {"mix": {"inputs": [name for name, _ in items[: len(weights)]], "weights": weights,
                    "files": ["mix.png", "mix_grid.png"]}}


@register_task("interpolate", config=InterpolateConfig)
def interpolate(ctx: TaskContext, cfg: InterpolateConfig) -> dict:
    items = ctx.inputs()
    if len(items) < 2:
        raise DataError(f"interpolate needs at least two input images, got {len(items)}")
    result = {"output": str(ctx.output), "steps": cfg.steps, "mode": cfg.mode, **_pairs(ctx, cfg, items)}
    if cfg.mix:
        result.update(_mix(ctx, cfg.mix, items))
    result["files"] = len(result["pair_files"]) + 1 + (2 if cfg.mix else 0)
    return result
