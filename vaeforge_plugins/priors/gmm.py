"""``gmm``: a Gaussian mixture over the latents, fitted by EM (scikit-learn ``GaussianMixture``, k-means
initialised): the classic ex-post density estimator (Ghosh et al. 2020). Fast to fit; ``temperature`` scales each
component's spread around its mean.

Sampling is in torch with a ``torch.Generator``, so a seed fixes the samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vaeforge.api import ConfigError, FitProgress, LatentPrior, at_least, choice, register_prior, unknown_choice

COVARIANCES = ("full", "diag")


@dataclass
class GMMConfig:
    components: int = at_least(1, 10)  # mixture components
    covariance: str = choice("full", COVARIANCES)  # full covariance matrices or diagonal ones


@register_prior("gmm", config=GMMConfig)
class GaussianMixture(LatentPrior):
    """sum_k weights[k] N(means[k], scale_tril[k] scale_tril[k]^T) over vector latents ``[D]``."""

    def __init__(self, cfg: GMMConfig, shape: tuple[int, ...]) -> None:
        super().__init__(cfg, shape)
        if cfg.components < 1:
            raise ConfigError(f"components must be >= 1, got {cfg.components}")
        if cfg.covariance not in COVARIANCES:
            raise unknown_choice("covariance", cfg.covariance, COVARIANCES)
        k, (d,) = cfg.components, shape
        self.register_buffer("weights", torch.full((k,), 1.0 / k))
        self.register_buffer("means", torch.zeros(k, d))
        self.register_buffer("scale_tril", torch.eye(d).repeat(k, 1, 1))  # Cholesky factors of the covariances

    def fit(self, latents: torch.Tensor, generator: torch.Generator, progress: FitProgress) -> None:
        """EM from a k-means start seeded by ``generator``: same latents and seed, same mixture."""
        from sklearn.mixture import GaussianMixture as SkMixture  # here: slow to import, and only fitting needs it

        cfg = self.cfg
        if cfg.components > len(latents):
            raise ConfigError(f"components={cfg.components} exceeds the {len(latents)} latents to fit")
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        gm = SkMixture(cfg.components, covariance_type=cfg.covariance, max_iter=200, random_state=seed)
        gm.fit(latents.double().numpy())  # seconds: no progress to show
        cov = torch.from_numpy(gm.covariances_)
        tril = torch.diag_embed(cov.sqrt()) if cfg.covariance == "diag" else torch.linalg.cholesky(cov)
        self.weights.copy_(torch.from_numpy(gm.weights_))
        self.means.copy_(torch.from_numpy(gm.means_))
        self.scale_tril.copy_(tril)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """A component by its weight, then its mean + temperature * L @ eps."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], 1, generator=generator)
        return self.means[k] + temperature * (self.scale_tril[k] @ eps).squeeze(-1)
