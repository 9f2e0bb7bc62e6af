"""Issue 20 item 4, no checkerboard: the metric (period-2 power of the mean grey-level spectrum) on synthetic
images, the decoder heads that keep the mesh out, and a trained U-Net's samples and reconstructions measured
against real faces."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import vaeforge
from vaeforge.api import HEADS, checkerboard_power, upsampling_head
from vaeforge.models.upsample import Blur
from vaeforge.models.vae import ImageSpec, build_model
from test_models import model_cfg

SIZE = 32
LIMIT = 2.0  # the bound: at most twice the checkerboard power of real faces


def mesh(size: int = SIZE) -> torch.Tensor:
    """The period-2 pattern +1/-1, ``[size, size]``."""
    i = torch.arange(size)
    return 1.0 - 2.0 * ((i[:, None] + i[None, :]) % 2).float()


def smooth(n: int, size: int = SIZE) -> torch.Tensor:
    """``n`` RGB images of random low-frequency waves (periods of 8 pixels and more)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(size).float() / size * 2 * torch.pi
    f = torch.randint(1, size // 8 + 1, (n, 3, 2, 1, 1), generator=g).float()
    return 0.5 + 0.2 * torch.sin(f[:, :, 0] * t[:, None] + f[:, :, 1] * t[None, :])


def test_checkerboard_power_measures_the_period_2_pattern_alone():
    faces = smooth(8)
    assert checkerboard_power(faces) < 1e-9  # no power near the Nyquist corner
    # an orthonormal FFT puts a pattern of amplitude a entirely into bin (H/2, W/2), with power a^2 H W
    assert checkerboard_power(0.5 + 0.1 * mesh().expand(4, 3, SIZE, SIZE)) == pytest.approx(0.01 * SIZE**2)
    # added to faces: its power adds (the smooth images have none there); grey level is the channel mean
    coloured = faces + 0.1 * mesh() * torch.tensor([3.0, 0.0, 0.0]).view(3, 1, 1)
    assert checkerboard_power(coloured) == pytest.approx(0.01 * SIZE**2, rel=1e-4)
    noise = torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    blurred = torch.nn.functional.avg_pool2d(noise, 3, 1, 1, count_include_pad=False)
    assert checkerboard_power(blurred) < 0.1 * checkerboard_power(noise)  # blur lowers it, never raises it


@pytest.mark.parametrize("kind", HEADS)
def test_every_head_maps_features_to_full_size_images(kind):
    head = torch.nn.Sequential(*upsampling_head(16, 3, 4, kind))
    assert head(torch.randn(2, 16, 8, 8)).shape == (2, 3, 32, 32)


def test_icnr_starts_as_nearest_upsampling_and_the_blur_removes_the_mesh():
    torch.manual_seed(0)
    features = torch.randn(2, 16, 8, 8)
    conv, shuffle = upsampling_head(16, 3, 4, "icnr")
    out = shuffle(conv(features))
    assert torch.equal(out, out[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))
    blurred = Blur(3)(0.5 + mesh().expand(2, 3, SIZE, SIZE))
    assert torch.allclose(blurred[:, :, 1:-1, 1:-1], torch.tensor(0.5))  # zero response at Nyquist
    before = [(k, v.shape) for k, v in torch.nn.Sequential(*upsampling_head(16, 3, 4)).state_dict().items()]
    after = [(k, v.shape) for k, v in torch.nn.Sequential(*upsampling_head(16, 3, 4, "icnr_blur")).state_dict().items()]
    assert before == after  # same tensors: the blur has none to save


def test_the_default_head_is_the_one_old_run_folders_were_trained_with():
    """A run folder saved before the head option has no value for it: the default must build the old layers (a
    pixel shuffle, default-initialised, with a mesh over every output), and the shipped recipe names the fix."""
    torch.manual_seed(0)
    args = {"widths": [8, 16], "stem": 4}
    old = build_model(model_cfg("unet", args), ImageSpec(SIZE))
    assert isinstance(old.decoder[-1], torch.nn.PixelShuffle)
    new = build_model(model_cfg("unet", {**args, "head": "icnr_blur"}), ImageSpec(SIZE))
    assert old.state_dict().keys() == new.state_dict().keys()
    z = torch.randn(64, old.latent_dim)
    with torch.no_grad():
        assert checkerboard_power(old.decode(z)) > 100 * checkerboard_power(new.decode(z))


def test_a_trained_unet_decodes_no_checkerboard(trained_run):
    """The session's tiny lfw_unet (the recipe's head): decoded N(0, I) latents, the latents furthest off the
    posterior's support, and reconstructions of val faces carry at most twice the period-2 power of the faces;
    the same faces with a faint mesh (amplitude 2/255, hardly visible) would not pass."""
    model = vaeforge.load(trained_run)
    x = torch.stack([s.image for s in model.samples("val", limit=256)])
    real = checkerboard_power(x)
    samples = model.decode(torch.randn(256, model.latent_dim, generator=torch.Generator().manual_seed(0)))
    assert checkerboard_power(samples) <= LIMIT * real
    assert checkerboard_power(model.reconstruct(x)) <= LIMIT * real
    assert checkerboard_power(x + 2 / 255 * mesh(x.shape[-1])) > LIMIT * real


def test_a_run_folder_saved_before_the_head_option_loads_its_old_head(trained_copy):
    """Its config.yaml names no head: it builds the plain pixel shuffle it was trained with, and its weights fit."""
    config = trained_copy / "config.yaml"
    saved = OmegaConf.load(config)
    assert saved.model.backbone.args.pop("head") == "icnr_blur"  # the recipe's choice, as a new run saves it
    OmegaConf.save(saved, config)
    decoder = vaeforge.load(trained_copy).vae.decoder
    assert isinstance(decoder[-1], torch.nn.PixelShuffle) and not any(isinstance(m, Blur) for m in decoder)
