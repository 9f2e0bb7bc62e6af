"""Learned latent priors (``prior`` plugins) fitted on the real training latents of a model trained here: shapes,
determinism, bit-exact safetensors round trips, likelihood, a third party's prior through the sample task, and one-
line errors for damaged files and unknown samplers."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import vaeforge
from helpers import PY, env, run, task
from vaeforge.data.splits import TRAIN
from vaeforge.errors import DataError
from vaeforge.models.prior import FittedPrior, build_prior, fit_prior, load_prior, standard_normal_log_prob

# Each built-in prior with options small enough to fit in seconds on 2 cores.
QUICK = {
    "gmm": {"components": 4},
    "flow": {"layers": 4, "hidden": 64, "steps": 150},
    "flow_matching": {"hidden": 64, "blocks": 2, "steps": 150, "sample_steps": 8},
}
THIRD_PARTY = '''
"""A third party's prior: a per-dim Gaussian around the latents' mean, its spread scaled by ``shrink``."""
from dataclasses import dataclass

import torch

from vaeforge.api import LatentPrior, register_prior


@dataclass
class ShrunkConfig:
    shrink: float = 1.0


@register_prior("shrunk_gaussian", config=ShrunkConfig)
class ShrunkGaussian(LatentPrior):
    vector_only = False  # it works at any latent shape

    def __init__(self, cfg, shape):
        super().__init__(cfg, shape)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, latents, generator, progress):
        self.mean.copy_(latents.mean(0))
        self.std.copy_(latents.std(0) * self.cfg.shrink)

    def sample(self, n, generator=None, temperature=1.0):
        return self.mean + temperature * self.std * torch.randn(n, *self.shape, generator=generator)
'''


@pytest.fixture(scope="module")
def latents(trained_run) -> torch.Tensor:
    """Posterior means of the first 600 real training images under the tiny trained model: ``[600, 16]``."""
    mu = vaeforge.load(trained_run).posterior_means(TRAIN, 600)
    assert mu.shape == (600, 16)
    return mu


@pytest.fixture(scope="module")
def fitted(latents) -> dict[str, FittedPrior]:
    return {name: fit_prior(name, args, latents, "test", progress=False) for name, args in QUICK.items()}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_prior_samples_the_latent_shape_deterministically(name, fitted, latents):
    prior = fitted[name]
    a, b, c = prior.sample(32, seeded(1)), prior.sample(32, seeded(1)), prior.sample(32, seeded(2))
    assert a.shape == (32, 16) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    again = fit_prior(name, QUICK[name], latents, "test", progress=False)  # the fit itself is seeded too
    assert all(torch.equal(again.module.state_dict()[k], v) for k, v in prior.module.state_dict().items())
    spread = prior.sample(2000, seeded(3)).std(0) / latents.std(0)  # it learned the latents' scale, not N(0, I)'s
    assert 0.5 < float(spread.median()) < 2, spread


@pytest.mark.parametrize("name", sorted(QUICK))
def test_prior_round_trips_its_safetensors_file_bit_exactly(name, fitted, tmp_path):
    prior, path = fitted[name], tmp_path / f"{name}.safetensors"
    prior.save(path)
    back = load_prior(path)
    state, saved = prior.module.state_dict(), back.module.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    assert (back.name, back.options, back.count, back.source) == (name, prior.options, 600, "test")
    assert torch.equal(back.sample(16, seeded(4)), prior.sample(16, seeded(4)))
    assert set(load_file(str(path))) == set(state)  # tensors only: nothing else is stored


def test_flow_likelihood_of_the_training_latents_beats_the_gaussians(fitted, latents):
    flow = fitted["flow"].module
    with torch.no_grad():
        ll = float(flow.log_prob(latents).mean())
    diagonal = torch.distributions.Normal(latents.mean(0), latents.std(0)).log_prob(latents).sum(1).mean()
    assert ll > float(diagonal) > float(standard_normal_log_prob(latents).mean()), (ll, diagonal)


def test_tampered_or_foreign_prior_files_are_one_line_errors_naming_the_file(trained_run, fitted, tmp_path):
    model, options = vaeforge.load(trained_run), {"components": 2}
    path = model.sampler("gmm", options, train_limit=100, progress=False).file
    good = path.read_bytes()
    tensors = load_file(str(path))
    damages = {
        "truncated": lambda: path.write_bytes(good[:100]),
        "pickle": lambda: torch.save({"weights": torch.ones(2)}, path),
        "no metadata": lambda: save_file(tensors, str(path)),
        "wrong shapes": lambda: save_file({**tensors, "means": torch.zeros(3, 16)}, str(path),
                                          {"vaeforge_prior": json.dumps(fitted["gmm"].metadata())}),
    }
    for what, damage in damages.items():
        damage()
        with pytest.raises(DataError) as err:
            model.sampler("gmm", options, train_limit=100)
        assert f"prior file {path}: " in str(err.value) and "\n" not in str(err.value), what
    proc = task("task=sample", f"run_dir={trained_run}", "sampler=gmm", "prior_args.components=2", "train_limit=100",
                check=False)  # the command line shows it as one line, exit status 2
    assert proc.returncode == 2 and f"prior file {path}: its tensors do not fit" in proc.stderr.splitlines()[-1]
    with pytest.raises(DataError, match="not a readable safetensors"):
        load_prior(tmp_path / "missing.safetensors")
    path.write_bytes(good)
    assert model.sampler("gmm", options, train_limit=100).reused


def test_unknown_sampler_is_a_did_you_mean(trained_run):
    proc = task("task=sample", f"run_dir={trained_run}", "sampler=flw", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "unknown sampler 'flw' (valid: auto, conv_diffusion, flow, flow_matching, gmm, prior; did you mean 'flow'?)"), proc.stderr


def test_third_party_prior_is_a_sampler_of_the_sample_task(trained_run, tmp_path):
    (tmp_path / "my_prior.py").write_text(THIRD_PARTY)
    out = tmp_path / "out"
    args = [PY, "-m", "vaeforge.run", "task=sample", f"run_dir={trained_run}", "plugins=[my_prior]", "n=6", "seed=3",
            "sampler=shrunk_gaussian", "prior_args.shrink=0.5", "train_limit=300"]
    run([*args, f"output={out}"], env=env(PYTHONPATH=str(tmp_path)))
    s = json.loads((out / "summary.json").read_text())
    assert s["sampler"] == "shrunk_gaussian" and s["prior_options"] == {"shrink": 0.5} and s["train_images"] == 300
    saved = load_file(s["prior_file"])
    assert set(saved) == {"mean", "std"} and saved["std"].shape == (16,)
    run([*args, f"output={tmp_path / 'again'}"], env=env(PYTHONPATH=str(tmp_path)))
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["reused"] is True
    assert (out / "grid.png").read_bytes() == (tmp_path / "again" / "grid.png").read_bytes()


def test_encoding_a_split_shows_its_progress(trained_run):
    code = f"import vaeforge; vaeforge.load({str(trained_run)!r}).posterior_means('train', 100)"
    shown = run([PY, "-c", code], env=env(TQDM_DISABLE="")).stderr  # tqdm reads TQDM_DISABLE when imported
    assert "encoding train images: 100%" in shown and "100/100" in shown, shown


def test_python_api_samples_from_a_fitted_prior(trained_run):
    model = vaeforge.load(trained_run)
    faces = model.sample(4, 0.8, seeded(0), sampler="flow", prior_args={**QUICK["flow"], "steps": 20})
    assert faces.shape == (4, 3, 64, 64) and 0 <= float(faces.min()) <= float(faces.max()) <= 1
    prior = model.sampler("flow", {**QUICK["flow"], "steps": 20})
    assert prior.reused and prior.file is not None and prior.file.parent == trained_run / "priors"


def test_evaluate_scores_each_chosen_sampler(trained_run, shared_dir, tmp_path):
    out = tmp_path / "eval"
    shown = run([PY, "-m", "vaeforge.run", "task=evaluate", f"run_dir={trained_run}", "limit=64", "samples=64",
                 "samplers=[prior,flow_matching]", "prior_train_limit=300",
                 *[f"prior_args.flow_matching.{k}={v}" for k, v in QUICK["flow_matching"].items()], f"output={out}"],
                env=env(VAEFORGE_LPIPS_WEIGHTS=str(shared_dir / "weights"), TQDM_DISABLE="")).stderr
    assert "evaluate: 100%" in shown and "3/3" in shown, shown  # its stages: reconstructions, two samplers
    s = json.loads((out / "summary.json").read_text())
    assert set(s["samplers"]) == {"prior", "flow_matching"} and "fd_alexnet_gmm" not in s
    assert math.isfinite(s["fd_alexnet_flow_matching"]) and s["fd_alexnet_flow_matching"] > 0
    assert s["samplers"]["flow_matching"]["fd_alexnet"] == s["fd_alexnet_flow_matching"] != s["fd_alexnet"]
    assert (out / "samples.png").is_file() and (out / "samples_flow_matching.png").is_file()


def test_vector_prior_of_a_spatial_latent_sees_it_flattened():
    prior = build_prior("flow", QUICK["flow"], (4, 2, 3))
    assert prior.module.shape == (24,) and prior.latent_shape == (4, 2, 3)
    assert prior.sample(5, seeded(0)).shape == (5, 4, 2, 3)
