"""The evaluator: validation metrics over every rank's share of the val split, and image grids, with the
weights a user would load (the EMA copy when kept; under DeepSpeed a whole fp32 copy of the live weights)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from ..data.stream import eval_batches
from ..metrics import active_units, kl_per_dim, psnr
from ..models.vae import VAE
from .builders import TrainModule, to_float
from .ema import WeightAverage
from .monitor import Monitor
from .speed import eager


@dataclass
class EvalData:
    """Where the val images come from and how they are batched and corrupted."""

    shards: list[Path]
    image_size: int
    batch_size: int
    max_batches: int  # 0: the whole split
    on_error: str
    seed: int
    inputs: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # uint8 batch, salt -> (clean, input)


class Evaluator:
    """Validation and grids. ``whole_copy`` (DeepSpeed only) returns a plain module with the whole current
    weights; calling it is collective."""

    def __init__(self, acc: Accelerator, live: TrainModule, ema: WeightAverage | None, data: EvalData,
                 whole_copy: Callable[[], TrainModule] | None) -> None:
        self.acc, self.live, self.ema, self.data, self.whole_copy = acc, live, ema, data, whole_copy

    def modules(self) -> tuple[VAE, nn.Module]:
        """The VAE to evaluate and the loss terms (collective under DeepSpeed)."""
        live = self.whole_copy() if self.whole_copy is not None else self.live
        return (self.ema.module if self.ema is not None else live.vae), live.losses

    @torch.no_grad()
    @eager()
    def validate(self, step: int, monitor: Monitor) -> dict[str, float]:
        """Val loss with the training weighting at ``step``, PSNR of posterior-mean reconstructions, and KL per
        latent dim, summed over all ranks' shards (collective)."""
        vae, losses = self.modules()
        vae.eval()
        losses.eval()  # terms may train on part of a batch (perceptual batch_fraction), validation is whole
        sums: dict[str, torch.Tensor] = {}
        device = self.acc.device
        kl_dims = torch.zeros(vae.latent_dim, device=device)
        count = torch.zeros((), device=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.data.seed + 7919 * self.acc.process_index)
            for i, batch in enumerate(self._batches()):
                x, x_in = self.data.inputs(batch["image"], -1 - i)
                with self.acc.autocast():
                    out = vae(x_in)
                    total, logs = losses(out, x, step)
                    mean_recon = vae.decode(out.mu)
                n = x.shape[0]
                values = {"loss": total, **logs, "mse": (mean_recon.float() - x).square().mean(),
                          "psnr": psnr(mean_recon, x).mean()}
                for key, value in values.items():
                    sums[key] = sums.get(key, torch.zeros((), device=device)) + value.float() * n
                kl_dims += kl_per_dim(out.mu, out.logvar).sum(0)
                count += n
        vae.train()
        losses.train()
        return self._summarise(sums, count, kl_dims, step, monitor)

    def _batches(self) -> Any:
        d = self.data
        batches = eval_batches(d.shards, d.batch_size, self.acc.process_index, self.acc.num_processes,
                               d.image_size, d.on_error)
        for i, batch in enumerate(batches):
            if d.max_batches and i >= d.max_batches:
                return
            yield batch

    def _summarise(self, sums: dict[str, torch.Tensor], count: torch.Tensor, kl_dims: torch.Tensor, step: int,
                   monitor: Monitor) -> dict[str, float]:
        """Sum over ranks (collective) and divide by the image count."""
        keys = sorted(sums)
        packed = torch.stack([sums[k] for k in keys] + [count]) if keys else count.reshape(1)
        packed = self.acc.reduce(packed, reduction="sum")
        kl_dims = self.acc.reduce(kl_dims, reduction="sum")
        total_n = packed[-1].clamp_min(1)
        result = {f"val/{k}": float(packed[i] / total_n) for i, k in enumerate(keys)}
        mean_kl = kl_dims / total_n
        result["val/active_units"] = float(active_units(mean_kl.unsqueeze(0)))
        monitor.histogram("val/kl_per_dim", mean_kl, step)
        return result

    @torch.no_grad()
    @eager()
    def log_images(self, step: int, monitor: Monitor) -> None:
        """Reconstructions of the first val images and samples from fixed latents, as TensorBoard grids."""
        vae, _ = self.modules()
        if not self.acc.is_main_process:
            return
        vae.eval()
        d, device = self.data, self.acc.device
        x = to_float(next(eval_batches(d.shards, 8, 0, 1, d.image_size, d.on_error))["image"].to(device))
        z = torch.randn(16, *vae.latent_shape, generator=torch.Generator().manual_seed(0)).to(device)
        monitor.grid("images/reconstruction", torch.cat([x, vae.decode(vae.encode(x)[0])]), step, nrow=x.shape[0])
        monitor.grid("images/samples", vae.decode(z), step, nrow=8)
        vae.train()
