"""``sample``: n new faces decoded from random latents z ~ N(0, temperature^2 I), as PNGs and one grid."""
from __future__ import annotations

from dataclasses import dataclass

from vaeforge.api import ConfigError, TaskContext, register_task


@dataclass
class SampleConfig:
    n: int = 64
    temperature: float = 1.0
    grid_columns: int = 8
    save_each: bool = False  # also one PNG per sample


@register_task("sample", config=SampleConfig)
def sample(ctx: TaskContext, cfg: SampleConfig) -> dict:
    if cfg.n < 1:
        raise ConfigError("sample: n must be at least 1")
    images = ctx.model.sample(cfg.n, cfg.temperature, generator=ctx.generator()).cpu()
    ctx.save_grid("grid.png", images, nrow=cfg.grid_columns)
    if cfg.save_each:
        for i, image in enumerate(images):
            ctx.save_image(f"sample_{i:04d}.png", image)
    return {"output": str(ctx.output), "files": 1 + (cfg.n if cfg.save_each else 0), "n": cfg.n,
            "temperature": cfg.temperature}
