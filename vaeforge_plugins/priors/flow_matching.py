"""``flow_matching``: a small MLP velocity field over the standardised latent vectors, trained by conditional flow
matching (Lipman et al. 2023, straight paths from noise to data) and sampled by integrating its ODE from N(0, I)
with ``sample_steps`` Heun steps. ``temperature`` scales the starting noise.

Like a diffusion model it follows the latents' shape closely (many narrow modes, curved ridges) where a mixture of
a few Gaussians or a flow of a few couplings smooths it over; unlike one, sampling is deterministic given the noise
and needs only tens of network evaluations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vaeforge.api import ConfigError, FitProgress, LatentPrior, Standardizer, minimize, register_prior


@dataclass
class FlowMatchingConfig:
    hidden: int = 256  # width of the velocity MLP
    blocks: int = 3  # residual blocks of the velocity MLP
    steps: int = 5000  # Adam steps of training (cosine learning-rate decay)
    batch_size: int = 256  # latents per training step
    lr: float = 1e-3  # peak learning rate (AdamW)
    sample_steps: int = 32  # Heun steps of the ODE from noise to latent (2 network evaluations each)


class Block(nn.Module):
    """x + MLP(LayerNorm(x)) conditioned on the time embedding."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.time = nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.norm(h) + self.time(temb))


class Velocity(nn.Module):
    """v(x, t): vector latents ``[B, D]`` and times ``[B]`` in [0, 1] -> velocities ``[B, D]``."""

    def __init__(self, dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), hidden // 2)), persistent=False)
        self.embed_time = nn.Sequential(nn.Linear(2 * (hidden // 2), hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs
        temb = self.embed_time(torch.cat([angles.sin(), angles.cos()], 1))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h)


class VelocityPrior(LatentPrior):
    """Standardisation, and a velocity field ``velocity(x, t)`` carrying N(0, I) at t=0 to the standardised latents
    at t=1 (a subclass builds both; its config has ``steps``, ``batch_size``, ``lr`` and ``sample_steps``)."""

    standardize: Standardizer
    velocity: nn.Module

    def fit(self, latents: torch.Tensor, generator: torch.Generator, progress: FitProgress) -> None:
        """Regress v(x_t, t) on x1 - x0 along x_t = (1 - t) x0 + t x1, x0 ~ N(0, I), x1 a standardised latent.
        Latents of any shape: each of their values is standardised on its own (flattened)."""
        cfg = self.cfg
        self.standardize.fit(latents.flatten(1))
        data = self.standardize(latents.flatten(1)).view_as(latents)

        def velocity_error() -> torch.Tensor:
            x1 = data[torch.randint(len(data), (cfg.batch_size,), generator=generator)]
            x0 = torch.randn(x1.shape, generator=generator)
            t = torch.rand(cfg.batch_size, generator=generator)
            xt = x0 + t.view(-1, *[1] * len(self.shape)) * (x1 - x0)
            return (self.velocity(xt, t) - (x1 - x0)).square().mean()

        self.train()
        minimize(self.velocity.parameters(), velocity_error, progress, cfg.steps, cfg.lr)
        self.eval()

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Heun integration of dx/dt = v(x, t) from ``temperature * eps`` at t=0 to t=1."""
        x = torch.randn(n, *self.shape, generator=generator) * temperature
        ts = torch.linspace(0, 1, self.cfg.sample_steps + 1)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            h = float(t1 - t0)
            d0 = self.velocity(x, t0.expand(n))
            d1 = self.velocity(x + h * d0, t1.expand(n))
            x = x + 0.5 * h * (d0 + d1)
        return self.standardize.inverse(x.flatten(1)).view(n, *self.shape)


@register_prior("flow_matching", config=FlowMatchingConfig)
class FlowMatching(VelocityPrior):
    """A velocity MLP over the standardised latent vectors."""

    def __init__(self, cfg: FlowMatchingConfig, shape: tuple[int, ...]) -> None:
        super().__init__(cfg, shape)
        if min(cfg.hidden, cfg.blocks, cfg.steps, cfg.batch_size, cfg.sample_steps) < 1 or cfg.hidden < 2:
            raise ConfigError(f"flow_matching: hidden must be at least 2 and blocks, steps, batch_size and "
                              f"sample_steps at least 1; got {cfg}")
        (dim,) = shape
        self.standardize = Standardizer(dim)
        self.velocity = Velocity(dim, cfg.hidden, cfg.blocks)
