"""``sample``: n new faces decoded from random latents, as PNGs and one grid.

``sampler=prior`` draws z ~ N(0, temperature^2 I). Any other sampler is a prior plugin (``gmm``, ``flow``,
``flow_matching``, ``conv_diffusion`` or a third party's) fitted on the posterior means of the training images:
the latents the encoder really uses do not fill N(0, I), and prior samples that land between them decode to poor
faces. A fitted prior is saved under ``run_dir/priors/`` and reused while the checkpoint and options
(``prior_args``) stay the same. ``temperature`` scales the sampler's spread. The default, ``auto``, is ``flow`` for
vector latents and, for the latent tensors of a spatial backbone, the prior over latent tensors fitted before (it
refuses until one is).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaeforge.api import DEFAULT_SAMPLER, TaskContext, at_least, register_task


@dataclass
class SampleConfig:
    n: int = at_least(1, 64)  # faces sampled
    temperature: float = at_least(0, 1.0)  # scales the sampler's spread: below 1 trades variety for typical faces
    grid_columns: int = at_least(1, 8)  # faces per grid row
    save_each: bool = False  # also one PNG per sample
    sampler: str = DEFAULT_SAMPLER  # prior (N(0, I)), a prior plugin fitted on the training posterior means (gmm, flow, flow_matching, conv_diffusion, ...) or auto: flow for vector latents, the fitted prior over latent tensors for tensors
    prior_args: dict[str, Any] = field(default_factory=dict)  # the prior plugin's options, e.g. prior_args.components=4
    train_limit: int = at_least(0, 0)  # training images the prior is fitted on (0: all)


@register_task("sample", config=SampleConfig)
def sample(ctx: TaskContext, cfg: SampleConfig) -> dict:
    sampler = ctx.model.sampler(cfg.sampler, cfg.prior_args, cfg.train_limit)
    images = ctx.model.decode(sampler.sample(cfg.n, ctx.generator(), cfg.temperature)).cpu()
    ctx.save_grid("grid.png", images, nrow=cfg.grid_columns)
    if cfg.save_each:
        for i, image in enumerate(images):
            ctx.save_image(f"sample_{i:04d}.png", image)
    return {"output": str(ctx.output), "files": 1 + (cfg.n if cfg.save_each else 0), "n": cfg.n,
            "temperature": cfg.temperature, "sampler": sampler.name, **sampler.describe()}
