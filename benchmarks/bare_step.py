"""A hand-written training step for a recipe: the baseline the engine's speed is compared with.

The recipe's model and loss terms (vaeforge.train.builders: the same code the engine runs), AdamW and gradient
clipping in their fastest PyTorch forms (fused, foreach: as the engine runs them), the precision and the
memory format / compilation (`trainer.channels_last`, `trainer.compile`) the engine resolves from the recipe;
nothing else (no loader, EMA, logging or checkpoints).
"""
from __future__ import annotations

import torch

from vaeforge.models.vae import ImageSpec
from vaeforge.train import speed as speeds
from vaeforge.train.builders import build_train_module
from vaeforge.train.distributed import Launch, resolve_precision


class BareStep:
    """``step(x, i)`` trains the recipe's model one step on images ``x`` in [0, 1]."""

    def __init__(self, cfg, image_size: int) -> None:
        torch.manual_seed(0)
        precision = resolve_precision(cfg.trainer.mixed_precision, Launch.from_env())  # as the engine
        self.speed = speeds.resolve(cfg.trainer, precision, None)
        self.module, owned = build_train_module(cfg, ImageSpec(image_size))
        speeds.prepare_layout(self.module, owned, self.speed)
        speeds.compile_modules(self.module, owned, self.speed)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), fused=True)
        self.clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        self.bf16 = precision == "bf16"

    def step(self, x: torch.Tensor, i: int) -> None:
        x = speeds.laid_out(x, self.speed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss, _, _ = self.module(x, x, i)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.optimizer.step()
