"""Backbones and loss terms: shapes, gradient flow, determinism, and the documented loss scale."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from vaeforge.config import load_config
from vaeforge.errors import ConfigError
from vaeforge.models.objective import LossSet
from vaeforge.models.vae import ImageSpec, VAEOutput, build_model


def model_cfg(backbone: str, args: dict, latent: int = 8):
    return OmegaConf.create({"latent_dim": latent, "backbone": {"name": backbone, "args": args}})


@pytest.mark.parametrize("backbone, args", [("unet", {"widths": [8, 16], "blocks_per_stage": 2}),
                                            ("mlp", {"hidden": [32, 16]})])
def test_backbone_shapes_gradients_and_determinism(backbone, args):
    torch.manual_seed(0)
    vae = build_model(model_cfg(backbone, args), ImageSpec(16))
    x = torch.rand(4, 3, 16, 16)
    out = vae(x)
    assert out.logits.shape == x.shape and out.mu.shape == out.logvar.shape == out.z.shape == (4, 8)
    assert 0 <= float(out.recon.min()) and float(out.recon.max()) <= 1
    out.logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())
    # The decoder depends on z alone: the same z decodes to the same image whatever was encoded.
    z = torch.randn(2, 8)
    assert torch.equal(vae.decode(z), vae.decode(z))
    torch.manual_seed(0)
    again = build_model(model_cfg(backbone, args), ImageSpec(16))
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), again.state_dict().values()))


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


def losses(**overrides):
    """lfw_unet's recon and kl terms (its LPIPS term, switched off here, has its own tests)."""
    cfg = load_config({"recipe": "lfw_unet", "losses.perceptual.weight": 0, **overrides})
    return LossSet(cfg.losses)


def test_recon_sum_is_per_image_sum_and_kl_warms_up():
    terms = losses(**{"losses.kl.args.warmup_steps": 10, "losses.kl.args.beta": 1.0})
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
    terms = losses(**{"losses.recon.args.kind": kind, "losses.recon.args.reduction": "mean"})
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
    total, _ = terms(VAEOutput(logits, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)),
                     torch.rand(2, 3, 4, 4), step=0)
    total.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
