"""``flow``: a RealNVP normalizing flow (Dinh et al. 2017) over the standardised latent vectors: an exact,
invertible map to N(0, I), trained by maximum likelihood. ``temperature`` scales the base Gaussian.

Each of ``layers`` affine coupling layers permutes the dims (a fixed random permutation per layer), keeps one half
and scales and shifts the other by an MLP of the kept half; scales are tanh-bounded and the last linear layer of
each MLP starts at zero, so the untrained flow is the identity and training starts stable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaeforge.api import (ConfigError, FitProgress, LatentPrior, Standardizer, minimize, register_prior,
                          standard_normal_log_prob)


@dataclass
class FlowConfig:
    layers: int = 8  # affine coupling layers
    hidden: int = 256  # width of each coupling layer's MLP (two hidden layers)
    steps: int = 3000  # Adam steps of maximum-likelihood training (cosine learning-rate decay)
    batch_size: int = 256  # latents per training step
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-5  # AdamW: ~9,000 latents of dim 128 are few for a flow


class Coupling(nn.Module):
    """y = x with ``x[perm][half:]`` scaled and shifted by an MLP of ``x[perm][:half]``."""

    def __init__(self, dim: int, hidden: int, perm: torch.Tensor) -> None:
        super().__init__()
        self.half = dim // 2
        self.register_buffer("perm", perm, persistent=False)  # recomputed from the layer index: not saved
        self.register_buffer("inv", perm.argsort(), persistent=False)
        self.net = nn.Sequential(nn.Linear(self.half, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * (dim - self.half)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(kept).chunk(2, dim=1)
        return torch.tanh(s), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data direction -> base direction; returns y and log |det dy/dx| per row."""
        x = x[:, self.perm]
        kept, moved = x[:, : self.half], x[:, self.half:]
        s, t = self._scale_shift(kept)
        return torch.cat([kept, moved * s.exp() + t], 1), s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        kept, moved = y[:, : self.half], y[:, self.half:]
        s, t = self._scale_shift(kept)
        return torch.cat([kept, (moved - t) * (-s).exp()], 1)[:, self.inv]


@register_prior("flow", config=FlowConfig)
class RealNVP(LatentPrior):
    """Standardisation, then ``layers`` couplings to N(0, I)."""

    def __init__(self, cfg: FlowConfig, shape: tuple[int, ...]) -> None:
        super().__init__(cfg, shape)
        (dim,) = shape
        if cfg.layers < 1 or cfg.hidden < 1 or cfg.steps < 1 or cfg.batch_size < 1 or dim < 2:
            raise ConfigError(f"flow: layers, hidden, steps and batch_size must be at least 1 and the latent at "
                              f"least 2-d; got {cfg} for latents of {dim} dims")
        self.standardize = Standardizer(dim)
        perms = [torch.randperm(dim, generator=torch.Generator().manual_seed(i)) for i in range(cfg.layers)]
        self.couplings = nn.ModuleList(Coupling(dim, cfg.hidden, p) for p in perms)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log density of latents ``z`` ``[N, D]`` under the flow (nats per latent)."""
        x, log_det = self.standardize(z), self.standardize.log_det().expand(len(z))
        for coupling in self.couplings:
            x, ld = coupling(x)
            log_det = log_det + ld
        return standard_normal_log_prob(x) + log_det

    def fit(self, latents: torch.Tensor, generator: torch.Generator, progress: FitProgress) -> None:
        """Maximum likelihood on random minibatches of the latents."""
        cfg = self.cfg
        self.standardize.fit(latents)

        def nll_per_dim() -> torch.Tensor:
            batch = latents[torch.randint(len(latents), (cfg.batch_size,), generator=generator)]
            return -self.log_prob(batch).mean() / latents.shape[1]

        self.train()
        minimize(self.couplings.parameters(), nll_per_dim, progress, cfg.steps, cfg.lr, cfg.weight_decay,
                 report_as="nll_per_dim")
        self.eval()

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """Base samples ``temperature * eps`` mapped back through the couplings and the standardisation."""
        y = torch.randn(n, self.shape[0], generator=generator) * temperature
        for coupling in reversed(self.couplings):
            y = coupling.inverse(y)
        return self.standardize.inverse(y)
