"""The ex-post density sampler: a Gaussian mixture fitted on training posterior means (the ``gmm`` prior plugin), in the
sample task (sampler=gmm) and in evaluate (fd_alexnet_gmm)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import PY, env, run, task
from vaeforge.errors import ConfigError, DataError
from vaeforge.models.prior import FittedPrior, fit_prior, load_prior

MEANS = torch.tensor([[-4.0, 0.0, 1.0], [3.0, 2.0, -1.0]])
WEIGHTS = torch.tensor([0.3, 0.7])


def two_blobs(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """n points of 0.3 N(MEANS[0], 0.5^2 I) + 0.7 N(MEANS[1], diag(1, 0.25, 0.5^2))."""
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    scale = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.5, 0.5]])
    return MEANS[k] + scale[k] * torch.randn(n, 3, generator=g)


def gmm(latents: torch.Tensor, components: int, covariance: str = "full", source: str = "") -> FittedPrior:
    return fit_prior("gmm", {"components": components, "covariance": covariance}, latents, source, progress=False)


@pytest.fixture(scope="module")
def mixture() -> FittedPrior:
    return gmm(two_blobs(), 2, "full", source="synthetic")


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_fit_recovers_a_known_mixture(covariance):
    fitted = gmm(two_blobs(), 2, covariance)
    m = fitted.module
    order = m.means[:, 0].argsort()
    assert torch.allclose(m.means[order], MEANS, atol=0.1), m.means
    assert torch.allclose(m.weights[order], WEIGHTS, atol=0.03)
    assert math.isclose(float(m.weights.sum()), 1, abs_tol=1e-5)
    cov = m.scale_tril @ m.scale_tril.transpose(1, 2)
    assert torch.allclose(cov[order].diagonal(dim1=1, dim2=2), torch.tensor([[0.25] * 3, [1.0, 0.25, 0.25]]),
                          atol=0.06)
    assert torch.equal(m.scale_tril, m.scale_tril.tril()) and fitted.count == 3000
    if covariance == "diag":
        assert torch.equal(m.scale_tril, torch.diag_embed(m.scale_tril.diagonal(dim1=1, dim2=2)))


def test_sampling_is_seeded_and_follows_the_mixture(mixture):
    a = mixture.sample(5000, torch.Generator().manual_seed(1))
    b = mixture.sample(5000, torch.Generator().manual_seed(1))
    c = mixture.sample(5000, torch.Generator().manual_seed(2))
    assert a.shape == (5000, 3) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.mean(0), WEIGHTS @ MEANS, atol=0.1)
    cold = mixture.sample(50, torch.Generator().manual_seed(1), temperature=0.0)  # only the component means
    assert (cold[:, None] - mixture.module.means[None]).abs().amax(-1).amin(1).max() < 1e-6


def test_save_load_round_trip(mixture, tmp_path):
    path = tmp_path / "priors" / "gmm.safetensors"
    mixture.save(path)
    back = load_prior(path)
    assert back.source == "synthetic" and back.count == mixture.count == 3000 and back.options == mixture.options
    for name in ("weights", "means", "scale_tril"):
        assert torch.equal(getattr(back.module, name), getattr(mixture.module, name))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(back.sample(10, g()), mixture.sample(10, g()))


def test_damaged_or_foreign_file_is_a_data_error_naming_it(mixture, tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    mixture.save(damaged)
    damaged.write_bytes(damaged.read_bytes()[:40])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"direction": torch.zeros(16)}, str(foreign))
    for path in (damaged, foreign, tmp_path / "missing.safetensors"):
        with pytest.raises(DataError, match=str(path.name)):
            load_prior(path)


@pytest.mark.parametrize("components, covariance, expected", [
    (0, "full", "components must be >= 1, got 0"),
    (11, "full", "components=11 exceeds the 10 latents"),
    (2, "ful", "unknown covariance 'ful' (valid: diag, full; did you mean 'full'?)"),
])
def test_bad_options_are_config_errors(components, covariance, expected):
    with pytest.raises(ConfigError) as err:
        gmm(torch.randn(10, 3), components, covariance)
    assert expected in str(err.value)


def test_sample_task_fits_saves_and_reuses_the_mixture(trained_run, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    args = ["task=sample", f"run_dir={trained_run}", "sampler=gmm", "prior_args.components=4", "train_limit=200", "n=8",
            "grid_columns=4", "seed=5"]
    task(*args, f"output={first}")
    s = json.loads((first / "summary.json").read_text())
    assert s["sampler"] == "gmm" and s["prior_options"] == {"components": 4, "covariance": "full"}
    assert s["reused"] is False and s["train_images"] == 200
    saved = Path(s["prior_file"])
    assert saved.parent == trained_run / "priors" and saved.name.startswith("gmm_") and saved.is_file()
    m = load_prior(saved)
    assert m.module.means.shape == (4, 16) and m.count == 200 and "train_limit=200" in m.source
    assert Image.open(first / "grid.png").size == (4 * 66 + 2, 2 * 66 + 2)
    task(*args, f"output={second}")
    assert json.loads((second / "summary.json").read_text())["reused"] is True
    assert (first / "grid.png").read_bytes() == (second / "grid.png").read_bytes()
    task("task=sample", f"run_dir={trained_run}", "n=8", "grid_columns=4", "seed=5", "sampler=prior",
         f"output={tmp_path / 'prior'}")
    assert json.loads((tmp_path / "prior" / "summary.json").read_text())["sampler"] == "prior"
    assert (tmp_path / "prior" / "grid.png").read_bytes() != (first / "grid.png").read_bytes()


@pytest.mark.parametrize("args, expected", [
    (["sampler=gm"], "unknown sampler 'gm' (valid: auto, conv_diffusion, flow, flow_matching, gmm, prior; did you mean 'gmm'?)"),
    (["sampler=gmm", "prior_args.covariance=diagonal"], "unknown covariance 'diagonal' (valid: diag, full"),
    (["sampler=gmm", "prior_args.components=0"], "prior 'gmm': components must be >= 1, got 0"),
    (["sampler=gmm", "prior_args.component=3"], "unknown key 'component' in prior 'gmm' (at top level: valid: "
                                                "components, covariance; did you mean 'components'?)"),
    (["sampler=prior", "prior_args.components=3"], "sampler 'prior' (N(0, I)) takes no prior_args"),
])
def test_bad_sampler_options_are_one_clear_line(trained_run, args, expected):
    proc = task("task=sample", f"run_dir={trained_run}", *args, check=False)
    assert proc.returncode == 2 and expected in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_evaluate_reports_the_mixture_samples_distance(trained_run, shared_dir, tmp_path):
    out = tmp_path / "eval"
    run([PY, "-m", "vaeforge.run", "task=evaluate", f"run_dir={trained_run}", "limit=64", "samples=64",
         "samplers=[prior,gmm]", "prior_args.gmm.components=3", "prior_train_limit=200", f"output={out}"],
        env=env(VAEFORGE_LPIPS_WEIGHTS=str(shared_dir / "weights")))
    s = json.loads((out / "summary.json").read_text())
    assert s["samplers"]["gmm"]["prior_options"]["components"] == 3
    assert math.isfinite(s["fd_alexnet_gmm"]) and s["fd_alexnet_gmm"] > 0 and "fd_alexnet_flow" not in s
    assert math.isfinite(s["fd_alexnet"]) and s["fd_alexnet"] > 0 and s["fd_alexnet"] != s["fd_alexnet_gmm"]
    assert Path(s["samplers"]["gmm"]["prior_file"]).is_file() and (out / "samples_gmm.png").is_file()
