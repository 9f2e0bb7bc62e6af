"""``sample``: n new faces decoded from random latents, as PNGs and one grid.

``sampler=prior`` draws z ~ N(0, temperature^2 I). ``sampler=gmm`` draws from a Gaussian mixture fitted on the
posterior means of the training images (ex-post density estimation: the latents the encoder really uses do not
fill N(0, I), and prior samples that land between them decode to poor faces); the mixture is saved under
``run_dir/samplers/`` and reused while the checkpoint and options stay the same. ``temperature`` scales each
component's spread.
"""
from __future__ import annotations

from dataclasses import dataclass

from vaeforge.api import ConfigError, TaskContext, did_you_mean, register_task

SAMPLERS = ("prior", "gmm")


@dataclass
class SampleConfig:
    n: int = 64
    temperature: float = 1.0
    grid_columns: int = 8
    save_each: bool = False  # also one PNG per sample
    sampler: str = "prior"  # prior (N(0, I)) | gmm (a mixture fitted on the training posterior means)
    components: int = 10  # gmm: mixture components
    covariance: str = "full"  # gmm: full | diag
    train_limit: int = 0  # gmm: training images the mixture is fitted on (0: all)


@register_task("sample", config=SampleConfig)
def sample(ctx: TaskContext, cfg: SampleConfig) -> dict:
    if cfg.n < 1:
        raise ConfigError("sample: n must be at least 1")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{cfg.sampler}' ({did_you_mean(cfg.sampler, SAMPLERS)})")
    extra: dict = {}
    if cfg.sampler == "gmm":
        mixture, reused = ctx.latent_mixture(cfg.components, cfg.covariance, cfg.train_limit)
        z = mixture.sample(cfg.n, ctx.generator(), cfg.temperature)
        images = ctx.model.decode(z).cpu()
        extra = {"components": cfg.components, "covariance": cfg.covariance, "reused": reused,
                 "mixture": str(ctx.mixture_path(cfg.components, cfg.covariance)), "train_images": mixture.count}
    else:
        images = ctx.model.sample(cfg.n, cfg.temperature, generator=ctx.generator()).cpu()
    ctx.save_grid("grid.png", images, nrow=cfg.grid_columns)
    if cfg.save_each:
        for i, image in enumerate(images):
            ctx.save_image(f"sample_{i:04d}.png", image)
    return {"output": str(ctx.output), "files": 1 + (cfg.n if cfg.save_each else 0), "n": cfg.n,
            "temperature": cfg.temperature, "sampler": cfg.sampler, **extra}
