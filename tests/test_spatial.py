"""Issue 20 item 3, spatial latents: the ``autoencoder_kl`` backbone (latent tensors [c, h, w] behind a 1x1-conv
posterior head), the ``conv_diffusion`` prior over latent tensors, and a tiny ``lfw_kl_f8`` trained on real LFW
faces: it resumes bit-exactly, every task runs on its tensor latents, the default sampler refuses in one line
until a prior over tensors is fitted and then uses it, and an export carries both."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import vaeforge
from helpers import cut_back, task, train
from test_models import loss_set
from test_optimizer_groups import digest
from vaeforge.api import ConfigError, DataError
from vaeforge.models.prior import build_prior, fit_prior, load_prior
from vaeforge.models.vae import ImageSpec, build_model
from vaeforge.tasks.runner import run_task

KL_TINY = [
    "recipe=lfw_kl_f8", "model.backbone.args.widths=[8,8,16,16]", "model.latent_dim=4", "losses.perceptual.weight=0",
    "losses.adv.args.disc_width=8", "losses.adv.args.start=2", "losses.adv.args.warmup_steps=2",
    "trainer.mixed_precision=no", "data.batch_size=8", "data.num_workers=0", "data.val_max_batches=1",
    "data.val_batch_size=16", "trainer.log_every=2", "trainer.val_every=3", "trainer.image_every=3",
    "trainer.checkpoint_every=3", "trainer.progress=false", "trainer.audit_samples=true", "optim.warmup_steps=0",
    "optim.schedule=constant",  # a resumed run has its own max_steps: constant lr
]
QUICK_PRIOR = {"width": 8, "blocks": 2, "steps": 30, "batch_size": 16, "sample_steps": 4}
FIT_LIMIT = 64


def kl_model(widths: list[int], size: int = 32, channels: int = 4):
    cfg = OmegaConf.create({"latent_dim": channels, "backbone": {"name": "autoencoder_kl", "args": {"widths": widths}}})
    return build_model(cfg, ImageSpec(size))


def test_autoencoder_kl_has_tensor_latents_and_a_kl_over_all_of_them():
    torch.manual_seed(0)
    vae = kl_model([8, 16, 16])  # two halvings: f = 4
    assert vae.latent_shape == (4, 8, 8) and vae.latent_dim == 256
    assert isinstance(vae.posterior, torch.nn.Conv2d) and vae.posterior.kernel_size == (1, 1)
    out = vae(torch.rand(2, 3, 32, 32))
    assert out.mu.shape == out.logvar.shape == out.z.shape == (2, 4, 8, 8)
    assert out.logits.shape == (2, 3, 32, 32)
    total, _ = loss_set({"kl": {"args": {"schedule": "constant"}}})(out, torch.rand(2, 3, 32, 32), step=0)
    by_hand = 0.5 * (out.mu.square() + out.logvar.exp() - 1 - out.logvar).sum((1, 2, 3)).mean()
    torch.testing.assert_close(total, by_hand)
    assert isinstance(vae.decoder[-1], torch.nn.Conv2d)  # resize-convolutions up to a full-resolution conv
    with pytest.raises(ConfigError, match="image size 36 is not divisible by f = 8"):
        kl_model([8, 8, 8, 8], size=36)


def test_conv_diffusion_fits_samples_and_reloads_latent_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    latents = 3.0 + 0.5 * torch.randn(48, 4, 8, 8, generator=g)  # far from N(0, I): standardised before fitting
    prior = fit_prior("conv_diffusion", QUICK_PRIOR, latents, "test", progress=False)
    assert prior.module.shape == (4, 8, 8)
    drawn = prior.sample(5, torch.Generator().manual_seed(1))
    assert drawn.shape == (5, 4, 8, 8) and torch.isfinite(drawn).all()
    assert abs(float(drawn.mean()) - 3.0) < 1.0  # back at the latents' scale
    prior.save(tmp_path / "p.safetensors")
    again = load_prior(tmp_path / "p.safetensors")
    assert torch.equal(again.sample(5, torch.Generator().manual_seed(1)), drawn)
    with pytest.raises(ConfigError, match=r"conv_diffusion models latent tensors \[c, h, w\].*\[16\]"):
        fit_prior("conv_diffusion", QUICK_PRIOR, torch.randn(8, 16), progress=False)


def test_conv_diffusion_default_width_follows_the_latent_channels():
    """8 feature maps per latent channel, at least 32: an 8-channel latent gets 64 (32 fitted it poorly)."""
    for shape, width in [((3, 16, 16), 32), ((4, 8, 8), 32), ((8, 8, 8), 64)]:
        assert build_prior("conv_diffusion", {}, shape).module.velocity.inp.out_channels == width
    assert build_prior("conv_diffusion", {"width": 48}, (8, 8, 8)).module.velocity.inp.out_channels == 48
    with pytest.raises(ConfigError, match="width must be >= 8 or null, got 4"):
        build_prior("conv_diffusion", {"width": 4}, (8, 8, 8))


@pytest.fixture(scope="module")
def kl_run(lfw64, tmp_path_factory) -> Path:
    """A tiny lfw_kl_f8 (adversarial term on from step 2) trained 6 steps on the real shards."""
    run_dir = tmp_path_factory.mktemp("kl_run") / "run"
    train(*KL_TINY, f"data.shards={lfw64}", f"run_dir={run_dir}", "trainer.max_steps=6")
    return run_dir


def test_a_spatial_run_resumes_bit_exactly(kl_run, lfw64, tmp_path):
    resumed = cut_back(kl_run, tmp_path / "resumed", 3)
    train(*KL_TINY, f"data.shards={lfw64}", f"run_dir={resumed}", "trainer.max_steps=6", "resume=true")
    assert digest(resumed) == digest(kl_run)


def run(kl_run: Path, name: str, **options) -> dict:
    return run_task({"task": name, "run_dir": str(kl_run), "output": str(kl_run / "tasks" / name), **options})


def test_every_task_runs_on_tensor_latents(kl_run):
    model = vaeforge.load(kl_run)
    assert model.latent_shape == (4, 8, 8)
    x = torch.stack([s.image for s in model.samples("val", 4)])
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 4, 8, 8)
    assert run(kl_run, "reconstruct", input="val", limit=4)["files"] == 5
    frames = model.interpolate(x[:2], x[2:], steps=3, mode="slerp")
    assert frames.shape == (2, 4, 3, 64, 64)
    torch.testing.assert_close(frames[:, 0], model.reconstruct(x[:2]))  # t=0 is the first input's mean
    assert run(kl_run, "interpolate", input="val", limit=4, steps=3, mix=[1.0, 1.0])["files"] == 2 + 1 + 2
    assert run(kl_run, "denoise", input="val", limit=4)["mean_psnr_denoised"] is not None
    edited = run(kl_run, "edit", input="val", limit=2, attribute="Smiling", train_limit=FIT_LIMIT, alphas=[0, 2])
    assert edited["vector_origin"] == "computed" and edited["files"] == 3
    with pytest.raises(ConfigError, match=r"direction has 16 dims, the model's latent has 256 \(shape \[4, 8, 8\]\)"):
        model.edit(x, torch.ones(16), [1.0])


def test_sampling_needs_a_prior_over_latent_tensors_then_uses_it(kl_run, tmp_path):
    refused = task("task=sample", f"run_dir={kl_run}", f"train_limit={FIT_LIMIT}", check=False)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"vaeforge: error: {kl_run} has latent tensors [4, 8, 8]: sampler 'auto' samples "
                               "them from a prior over latent tensors, and none is fitted on "), lines[0]
    assert f"task=sample run_dir={kl_run} sampler=conv_diffusion" in lines[0]
    fitted = run(kl_run, "sample", sampler="conv_diffusion", n=4, train_limit=FIT_LIMIT, prior_args=QUICK_PRIOR)
    assert fitted["sampler"] == "conv_diffusion" and not fitted["reused"] and fitted["train_images"] == FIT_LIMIT
    default = run(kl_run, "sample", n=4, train_limit=FIT_LIMIT)
    assert default["sampler"] == "conv_diffusion" and default["reused"]
    assert default["prior_file"] == fitted["prior_file"]

    exported = vaeforge.from_pretrained(vaeforge.export(kl_run, tmp_path / "export"))
    assert exported.latent_shape == (4, 8, 8) and exported.info["latent_shape"] == [4, 8, 8]
    assert "a 4x8x8 latent tensor" in (tmp_path / "export" / "README.md").read_text()
    latents = exported.sampler("auto", train_limit=FIT_LIMIT).sample(3)  # the exported prior: no refitting
    assert exported.decode(latents).shape == (3, 3, 64, 64)
    with pytest.raises(DataError, match="has latent tensors"):
        exported.sampler("auto", train_limit=1)  # none fitted with that training-image limit
