"""Ex-post density estimation: a Gaussian mixture fitted on the posterior means of the training images, sampled in
place of the prior.

A VAE's aggregate posterior (where the encoder actually puts faces) does not fill N(0, I): prior samples land in
holes between the training latents and decode to blurry or broken faces. A mixture fitted after training follows
the latents' real shape (Ghosh et al. 2020, "From variational to deterministic autoencoders"). The fit uses
scikit-learn's ``GaussianMixture``; sampling is in torch with a ``torch.Generator``, so a seed fixes the samples.
Mixtures are saved as safetensors (tensors ``weights``, ``means``, ``scale_tril`` + metadata).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from ..errors import ConfigError, DataError, did_you_mean
from ..runs.tensorfile import read_tensors, write_tensors

SAMPLERS_DIR = "samplers"  # fitted mixtures inside a run folder
COVARIANCES = ("full", "diag")


def check_options(components: int, covariance: str) -> None:
    """A ConfigError for a component count below 1 or an unknown covariance type."""
    if components < 1:
        raise ConfigError(f"components must be at least 1, got {components}")
    if covariance not in COVARIANCES:
        raise ConfigError(f"unknown covariance '{covariance}' ({did_you_mean(covariance, COVARIANCES)})")


@dataclass
class LatentMixture:
    """A Gaussian mixture over latents: sum_k weights[k] N(means[k], scale_tril[k] scale_tril[k]^T)."""

    weights: torch.Tensor  # [K], sums to 1
    means: torch.Tensor  # [K, D]
    scale_tril: torch.Tensor  # [K, D, D], lower-triangular Cholesky factors of the covariances
    source: str = ""  # what it was fitted on (checkpoint, weights, image count, options), to tell stale files
    count: int = 0  # latents it was fitted on

    @property
    def components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def fit(cls, mu: torch.Tensor, components: int, covariance: str = "full", seed: int = 0, source: str = ""
            ) -> LatentMixture:
        """Fit ``components`` Gaussians (``full`` or ``diag`` covariances) to latents ``mu`` ``[N, D]`` by EM,
        k-means initialised with ``seed``: same data and seed, same mixture."""
        from sklearn.mixture import GaussianMixture  # here: slow to import, and only fitting needs it

        check_options(components, covariance)
        if mu.ndim != 2:
            raise ConfigError(f"latents to fit must be [N, D], got shape {list(mu.shape)}")
        if components > len(mu):
            raise ConfigError(f"components={components} exceeds the {len(mu)} latents to fit")
        gm = GaussianMixture(components, covariance_type=covariance, max_iter=200, random_state=seed)
        gm.fit(mu.detach().double().cpu().numpy())
        cov = torch.from_numpy(gm.covariances_)
        tril = torch.diag_embed(cov.sqrt()) if covariance == "diag" else torch.linalg.cholesky(cov)
        return cls(torch.from_numpy(gm.weights_).float(), torch.from_numpy(gm.means_).float(), tril.float(),
                   source, len(mu))

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` latents ``[n, D]``: a component by its weight, then its mean + temperature * L @ eps."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, 1, generator=generator)
        return self.means[k] + temperature * (self.scale_tril[k] @ eps).squeeze(-1)

    def save(self, path: Path) -> None:
        tensors = {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}
        write_tensors(path, tensors, {"source": self.source, "count": str(self.count)})

    @classmethod
    def load(cls, path: str | Path) -> LatentMixture:
        """Read a saved mixture; a missing, foreign or damaged file is a DataError naming it."""
        meta, t = read_tensors(path, "sampler file")
        shapes = {k: list(v.shape) for k, v in t.items()}
        w, m, s = t.get("weights"), t.get("means"), t.get("scale_tril")
        if w is None or m is None or s is None or w.ndim != 1 or m.ndim != 2 or s.ndim != 3 \
                or not len(w) == len(m) == len(s) or not m.shape[1] == s.shape[1] == s.shape[2]:
            raise DataError(f"sampler file {path}: not a latent mixture (need weights [K], means [K, D], "
                            f"scale_tril [K, D, D]; has {shapes})")
        try:
            count = int(meta.get("count", 0))
        except ValueError:
            raise DataError(f"sampler file {path}: bad 'count' metadata {meta.get('count')!r}") from None
        return cls(w, m, s, meta.get("source", ""), count)
