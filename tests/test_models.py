"""Backbones (unet, mlp, resnet) and the recon / kl / perceptual loss terms: shapes, gradient flow, determinism,
the documented scales and schedules, user errors, and short trainings through the real CLI."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import TINY, TINY_RUN, train
from vaeforge.config import load_config
from vaeforge.errors import ConfigError, DataError
from vaeforge.models.lpips import ENV_WEIGHTS, LPIPS
from vaeforge.models.objective import LossSet
from vaeforge.models.vae import ImageSpec, VAEOutput, build_model
from vaeforge.runs import checkpoints as ckpt

RESNET = {"name": "resnet10t"}  # the smallest timm ResNet: fast tests, same code path as resnet18/50


def model_cfg(backbone: str, args: dict, latent: int = 8):
    return OmegaConf.create({"latent_dim": latent, "backbone": {"name": backbone, "args": args}})


def seeded_build(backbone: str, args: dict, size: int):
    torch.manual_seed(0)
    return build_model(model_cfg(backbone, args), ImageSpec(size))


def recipe_losses(**overrides) -> LossSet:
    """lfw_unet's recon and kl terms (its LPIPS term, switched off here, has its own tests)."""
    cfg = load_config({"recipe": "lfw_unet", "losses.perceptual.weight": 0, **overrides})
    return LossSet(cfg.losses)


def loss_set(terms: dict) -> LossSet:
    specs = OmegaConf.create({k: {"name": v.get("name", k), "weight": v.get("weight", 1.0), "args": v.get("args", {})}
                              for k, v in terms.items()})
    return LossSet(specs)


def output(logits: torch.Tensor, latent: int = 4, mu_shift: float = 0.0) -> VAEOutput:
    b = logits.shape[0]
    mu = torch.full((b, latent), mu_shift)
    return VAEOutput(logits, mu, torch.zeros(b, latent), mu)


@pytest.fixture(scope="module")
def alex_weights(lpips_weights: Path) -> Path:
    return lpips_weights / "lpips_alexnet.safetensors"


# ----- backbones -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, args, size", [
    ("unet", {"widths": [8, 16], "blocks_per_stage": 2}, 16),
    ("mlp", {"hidden": [32, 16]}, 16),
    ("resnet", RESNET, 32),
    ("unet", {"widths": [8, 16, 32], "attention": [8, 4], "attention_heads": 2}, 16),
], ids=["unet", "mlp", "resnet", "unet-attention"])
def test_backbone_shapes_gradients_and_determinism(backbone, args, size):
    vae, again = seeded_build(backbone, args, size), seeded_build(backbone, args, size)
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values()))
    x = torch.rand(4, 3, size, size)
    out = vae(x)
    assert out.logits.shape == x.shape and out.mu.shape == out.logvar.shape == out.z.shape == (4, 8)
    assert 0 <= float(out.recon.detach().min()) and float(out.recon.detach().max()) <= 1
    out.logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())
    # The decoder depends on z alone: the same z decodes to the same image whatever was encoded, in both modes.
    z = torch.randn(2, 8)
    for training in (True, False):
        vae.train(training)
        assert torch.equal(vae.decode(z), vae.decode(z))


def test_unet_rejects_an_image_size_its_stages_cannot_halve():
    with pytest.raises(ConfigError, match="not divisible"):
        build_model(model_cfg("unet", {"widths": [8, 8, 8, 8, 8]}), ImageSpec(48))
    with pytest.raises(ConfigError, match="not divisible by stem 4"):
        build_model(model_cfg("unet", {"widths": [8, 8, 8], "stem": 4}), ImageSpec(48))
    with pytest.raises(ConfigError, match="unknown stem '3' \\(valid: 1, 2, 4\\)"):
        build_model(model_cfg("unet", {"widths": [8], "stem": 3}), ImageSpec(48))


@pytest.mark.parametrize("stem", [2, 4])
def test_unet_stem_runs_no_block_at_full_resolution(stem):
    vae = build_model(model_cfg("unet", {"widths": [8, 16], "stem": stem}), ImageSpec(32))
    x = torch.rand(2, 3, 32, 32)
    out = vae(x)
    assert out.logits.shape == x.shape
    out.logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())
    first_conv = next(m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.stride == (stem, stem)  # the first convolution already works at 32 / stem
    sizes = []
    for module in vae.decoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
    vae.decode(torch.randn(1, vae.latent_dim))
    assert max(sizes) == 32 // stem  # the decoder's last conv runs at 32 / stem, then a pixel shuffle


def test_unet_attention_blocks_sit_at_the_asked_sizes():
    vae = build_model(model_cfg("unet", {"widths": [8, 16, 32], "attention": [4]}), ImageSpec(16))
    attention = [m for m in vae.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert [m.embed_dim for m in attention] == [32, 32]  # one in the encoder, one in the decoder, at 4x4
    with pytest.raises(ConfigError, match=r"attention at sizes \[3\], but the stages run at \[16, 8, 4\]"):
        build_model(model_cfg("unet", {"widths": [8, 16, 32], "attention": [3]}), ImageSpec(16))


def test_resnet_decoder_mirrors_the_encoder_and_loads_pretrained_weights(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(RESNET["name"], pretrained=False)  # a full model, classifier included
    file = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(file))
    vae = build_model(model_cfg("resnet", {**RESNET, "pretrained_file": str(file)}), ImageSpec(64))
    encoder_state = vae.encoder.features.state_dict()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in encoder_state.items())
    widths = [m.out_channels for m in vae.decoder if isinstance(m, torch.nn.Conv2d)]
    assert widths == [256, 128, 64, 64, 3 * 2 * 2]  # resnet10t stages at strides 16, 8, 4, 2 mirrored; RGB x 2x2
    assert isinstance(vae.decoder[-1], torch.nn.PixelShuffle)  # the stem's mirror: 2x2 pixels per position
    assert vae.posterior.in_features == 512 * 2 * 2  # the deepest 2x2 map of a 64x64 image, flattened


def test_resnet_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown timm model 'resnet181' \\(did you mean: resnet18"):
        build_model(model_cfg("resnet", {"name": "resnet181"}), ImageSpec(64))
    with pytest.raises(ConfigError, match="not a multiple of resnet10t's stride 32"):
        build_model(model_cfg("resnet", RESNET), ImageSpec(48))
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(other))
    with pytest.raises(DataError, match="lacks .* encoder tensors"):
        build_model(model_cfg("resnet", {**RESNET, "pretrained_file": str(other)}), ImageSpec(32))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x01")
    for path in (broken, tmp_path / "missing.safetensors"):  # named in the error, whatever safetensors raised
        with pytest.raises(DataError, match=f"resnet: pretrained_file {path}: not a readable safetensors file"):
            build_model(model_cfg("resnet", {**RESNET, "pretrained_file": str(path)}), ImageSpec(32))


# ----- recon ---------------------------------------------------------------------------------------------------
def test_recon_sum_is_per_image_sum_and_kl_warms_up():
    terms = recipe_losses(**{"losses.kl.args.warmup_steps": 10, "losses.kl.args.beta": 1.0})
    target = torch.full((2, 3, 4, 4), 0.5)
    logits = torch.zeros_like(target)  # sigmoid(0) = 0.5: perfect reconstruction
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    total, logs = terms(VAEOutput(logits, mu, logvar, mu), target, step=5)
    assert float(total) == 0.0 and float(logs["kl/beta"]) == 0.5
    # 0.1 away on every one of 48 pixels: sum 48 * 0.01 per image; KL of N(1, 1) in 5 dims = 2.5 nats.
    off = torch.logit(torch.full_like(target, 0.6))
    total, logs = terms(VAEOutput(off, mu + 1, logvar, mu), target, step=20)
    assert float(logs["recon"]) == pytest.approx(0.48, rel=1e-4)
    assert float(logs["kl/nats"]) == pytest.approx(2.5) and float(logs["kl"]) == pytest.approx(2.5)


@pytest.mark.parametrize("kind", ["mse", "l1", "bce"])
def test_recon_kinds_have_gradients(kind):
    terms = recipe_losses(**{"losses.recon.args.kind": kind, "losses.recon.args.reduction": "mean"})
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
    total, _ = terms(VAEOutput(logits, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)),
                     torch.rand(2, 3, 4, 4), step=0)
    total.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_gaussian_nll_is_the_gaussian_log_likelihood_with_a_learned_scale():
    terms = loss_set({"recon": {"args": {"kind": "gaussian_nll", "init_log_scale": -1.0}}})
    target = torch.rand(2, 3, 4, 4)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    total, logs = terms(output(logits), target, step=0)
    logits_ = logits.detach()
    expected = -torch.distributions.Normal(torch.sigmoid(logits_), math.exp(-1.0)).log_prob(target).sum((1, 2, 3))
    assert float(total.detach()) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert float(logs["recon/sigma"]) == pytest.approx(math.exp(-1.0))
    total.backward()
    log_scale = terms.terms["recon"].log_scale
    assert logits.grad is not None and log_scale.grad is not None
    # d/d(log sigma) = N (1 - mse / sigma^2) per image: positive while sigma is above the error, so it shrinks.
    mse = float((torch.sigmoid(logits_) - target).square().mean())
    assert float(log_scale.grad) == pytest.approx(48 * (1 - mse / math.exp(-2.0)), rel=1e-4)
    assert "terms.recon.log_scale" in terms.state_dict()


def test_recon_rejects_unknown_kind_with_the_valid_ones():
    with pytest.raises(ConfigError, match="loss 'recon' \\(recon\\): unknown kind 'nll' .*gaussian_nll"):
        loss_set({"recon": {"args": {"kind": "nll"}}})


# ----- kl ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    ({"schedule": "constant", "beta": 0.5, "warmup_steps": 100}, {0: 0.5, 50: 0.5, 1000: 0.5}),
    ({"schedule": "linear", "beta": 2.0, "warmup_steps": 100}, {0: 0.0, 50: 1.0, 100: 2.0, 1000: 2.0}),
    ({"schedule": "cyclical", "cycle_steps": 100, "ramp_fraction": 0.5},
     {0: 0.0, 25: 0.5, 50: 1.0, 99: 1.0, 100: 0.0, 125: 0.5}),
])
def test_kl_schedules(args, expected):
    terms = loss_set({"kl": {"args": args}})
    logits = torch.zeros(2, 3, 4, 4)
    for step, beta in expected.items():
        total, logs = terms(output(logits, mu_shift=1.0), torch.full_like(logits, 0.5), step)
        assert float(logs["kl/beta"]) == pytest.approx(beta), step
        assert float(total) == pytest.approx(beta * 4 * 0.5)  # KL of N(1, 1) is 0.5 nats per dim, 4 dims


def test_kl_free_bits_charge_a_floor_per_dim_and_stop_its_gradient():
    terms = loss_set({"kl": {"args": {"schedule": "constant", "free_bits": 0.25}}})
    mu = torch.tensor([[1.0, 0.1, 0.0]], requires_grad=True)  # KL per dim: 0.5, 0.005, 0
    out = VAEOutput(torch.zeros(1, 3, 2, 2), mu, torch.zeros(1, 3), mu)
    total, logs = terms(out, torch.full((1, 3, 2, 2), 0.5), step=0)
    assert float(logs["kl/nats"]) == pytest.approx(0.505)
    assert float(total.detach()) == pytest.approx(0.5 + 0.25 + 0.25) == float(logs["kl/charged_nats"])
    total.backward()
    assert mu.grad.tolist() == [[1.0, 0.0, 0.0]]
    with pytest.raises(ConfigError, match="unknown schedule 'cosine' .*constant, cyclical, linear"):
        loss_set({"kl": {"args": {"schedule": "cosine"}}})


# ----- perceptual ----------------------------------------------------------------------------------------------
def test_perceptual_scale_gradient_and_checkpoint_state(alex_weights):
    terms = loss_set({"perceptual": {"args": {"weights": str(alex_weights)}},
                      "lp_mean": {"name": "perceptual", "args": {"weights": str(alex_weights), "reduction": "mean"}}})
    target = torch.rand(2, 3, 32, 32)
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    total, logs = terms(output(logits), target, step=0)
    distance = LPIPS("alex", alex_weights)(torch.sigmoid(logits.detach()), target)
    assert float(logs["lp_mean"]) == pytest.approx(float(distance.mean()), rel=1e-5)
    assert float(logs["perceptual"]) == pytest.approx(float(distance.mean()) * 3 * 32 * 32, rel=1e-5)
    assert float(logs["perceptual/lpips"]) == pytest.approx(float(distance.mean()), rel=1e-5)
    total.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    assert list(terms.parameters()) and not any(p.requires_grad for p in terms.parameters())  # frozen LPIPS


def test_perceptual_batch_fraction_trains_on_a_share_and_validates_on_all(alex_weights):
    terms = loss_set({"perceptual": {"args": {"weights": str(alex_weights), "reduction": "mean",
                                              "batch_fraction": 0.25}}})
    target = torch.rand(8, 3, 32, 32)
    logits = torch.randn(8, 3, 32, 32, requires_grad=True)
    distance = LPIPS("alex", alex_weights)(torch.sigmoid(logits.detach()), target)
    total, _ = terms(output(logits), target, step=0)
    assert float(total.detach()) == pytest.approx(float(distance[:2].mean()), rel=1e-5)  # the first 2 of 8 images
    total.backward()
    touched = logits.grad.abs().sum((1, 2, 3)) > 0
    assert touched.tolist() == [True, True] + [False] * 6
    terms.eval()
    total, _ = terms(output(logits), target, step=0)
    assert float(total) == pytest.approx(float(distance.mean()), rel=1e-5)
    with pytest.raises(ConfigError, match=r"batch_fraction must be > 0 and <= 1, got 0"):
        loss_set({"perceptual": {"args": {"weights": str(alex_weights), "batch_fraction": 0.0}}})


def test_perceptual_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(DataError, match="no LPIPS weights for 'vgg': pass the file"):
        loss_set({"perceptual": {"args": {"net": "vgg"}}})


def test_a_term_with_weight_zero_is_switched_off(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no LPIPS weights anywhere: building it would fail
    terms = loss_set({"recon": {}, "perceptual": {"weight": 0.0}})
    assert list(terms.terms) == ["recon"]
    total, logs = terms(output(torch.zeros(2, 3, 8, 8)), torch.full((2, 3, 8, 8), 0.5), step=0)
    assert not any(key.startswith("perceptual") for key in logs)


# ----- recipes and real trainings ------------------------------------------------------------------------------
@pytest.mark.usefixtures("lpips_weights")  # their perceptual term loads the shared weights
@pytest.mark.parametrize("recipe, size", [("lfw_resnet", 64), ("lfw_unet_nll", 64), ("lfw_unet_128", 128),
                                          ("lfw_kl_f8", 64), ("lfw_kl_f4", 64)])
def test_recipes_build(recipe, size):
    cfg = load_config({"recipe": recipe})
    vae = build_model(cfg.model, ImageSpec(size))
    LossSet(cfg.losses)
    with torch.no_grad():
        assert vae(torch.rand(1, 3, size, size)).logits.shape == (1, 3, size, size)


def scalars(run_dir: Path) -> set[str]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_resnet_with_learned_variance_cyclical_kl_free_bits_and_lpips_trains(lfw64, alex_weights, tmp_path):
    run = tmp_path / "run"
    train(*TINY_RUN, f"data.shards={lfw64}", f"run_dir={run}", "trainer.max_steps=10", "trainer.val_every=10",
          "model.backbone.name=resnet", f"model.backbone.args.name={RESNET['name']}",
          "losses.recon.args.kind=gaussian_nll", "losses.kl.args.schedule=cyclical",
          "losses.kl.args.cycle_steps=10", "losses.kl.args.free_bits=0.05",
          "losses.lpips.name=perceptual", "losses.lpips.weight=0.5", f"losses.lpips.args.weights={alex_weights}")
    tags = scalars(run)
    assert {"train/recon/sigma", "train/kl/charged_nats", "train/lpips", "train/lpips/lpips", "val/psnr"} <= tags
    saved = load_file(str(ckpt.latest_checkpoint(run) / "losses.safetensors"))
    assert list(saved) == ["terms.recon.log_scale"]  # the learned scale is saved; the frozen LPIPS is not
    assert float(saved["terms.recon.log_scale"]) != pytest.approx(-2.0, abs=1e-4)  # trained from its initial value


def test_unet_nll_recipe_with_attention_trains(lfw64, tmp_path):
    run = tmp_path / "run"
    train(*TINY, "recipe=lfw_unet_nll", f"data.shards={lfw64}", f"run_dir={run}", "trainer.max_steps=10",
          "trainer.val_every=10", "model.backbone.args.attention=[16]")  # TINY's stages run at 64, 32, 16
    assert {"train/recon/sigma", "val/psnr", "val/recon/sigma"} <= scalars(run)
