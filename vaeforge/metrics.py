"""Image and latent metrics shared by training, tasks and evaluation."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) of each latent dim for each sample, ``[B, D]`` (tensor latents flattened)."""
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def active_units(kl_dims: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dims whose mean KL (nats) exceeds ``threshold``: the ones the model actually uses."""
    return int((kl_dims.mean(0) > threshold).sum())


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) of each image pair in [0, 1], ``[B]``."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised 1-d Gaussian window of ``size`` taps."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x.square() / (2 * sigma**2))
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) of each image pair in [0, 1], ``[B]``: Gaussian window 11,
    sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range 1; per channel over the window positions inside the image,
    then averaged."""
    # (co)variances are differences of close numbers: centring each image first keeps float32 exact enough
    x, y = x.float(), y.float()
    cx, cy = x.mean((2, 3), keepdim=True), y.mean((2, 3), keepdim=True)
    x, y = x - cx, y - cy
    stack = torch.cat([x, y, x * x, y * y, x * y], 1)  # every local mean in one (separable) blur
    n = stack.shape[1]
    g = gaussian_window(size, sigma).float().to(x.device)
    blurred = torch.nn.functional.conv2d(stack, g.view(1, 1, 1, size).expand(n, 1, 1, size), groups=n)
    blurred = torch.nn.functional.conv2d(blurred, g.view(1, 1, size, 1).expand(n, 1, size, 1), groups=n)
    mx, my, xx, yy, xy = blurred.chunk(5, 1)
    vx, vy, cxy = xx - mx.square(), yy - my.square(), xy - mx * my
    mx, my = mx + cx, my + cy
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx.square() + my.square() + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run LAPACK on one thread: MKL's multi-threaded eigh on a few-hundred-dim matrix is far slower than a single
    thread on a small machine (docs/benchmarks.md#measurements-behind-the-code)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative rounding-error eigenvalues -> 0)."""
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def gaussian_frechet(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    with _one_thread():
        root = _sqrt_psd(cov1)
        cross = torch.linalg.eigvalsh(root @ cov2 @ root).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, D]`` (FID's formula on any features)."""
    a, b = a.double(), b.double()
    return gaussian_frechet(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def checkerboard_power(images: torch.Tensor) -> float:
    """Power of the period-2 (checkerboard) frequencies of images ``[B, C, H, W]``: the mean over images of the
    2-d power spectrum (orthonormal FFT) of each grey-level image (channel mean), summed over the 3x3 block of
    bins around (H/2, W/2). A decoder whose upsampling leaves a per-pixel mesh puts its power there; blur only
    lowers it (a ratio of those bins to their neighbours would instead rise with blur)."""
    grey = images.float().mean(1)
    power = torch.fft.fft2(grey, norm="ortho").abs().square().mean(0)
    h, w = power.shape
    rows = torch.arange(h // 2 - 1, h // 2 + 2) % h
    cols = torch.arange(w // 2 - 1, w // 2 + 2) % w
    return float(power[rows][:, cols].sum())
