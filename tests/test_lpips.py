"""LPIPS v0.1 against the reference implementation, on real faces, with the real weights from ../shared.

The published check values (0.722 / 0.138 on the LPIPS project's ex_ref.png vs ex_p0.png / ex_p1.png) cannot be
reproduced here: those images ship in no package this project can install (not in the ``lpips`` wheel either),
and there is no other network. Instead the reference implementation itself, the ``lpips`` package of the same
authors (test extra), is the oracle: its own v0.1 heads must equal the heads in our weights file, and with the
same ImageNet trunk its distances must equal ours on real LFW faces under several distortions.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torchvision.models import squeezenet1_1

from vaeforge.errors import ConfigError, DataError
from vaeforge.models.lpips import ENV_WEIGHTS, LPIPS, NETS, find_lpips_weights
from vaeforge.models.lpips_weights import download

FILES = {net: spec.file for net, spec in NETS.items()}


@pytest.fixture(scope="module")
def faces(lfw_members) -> torch.Tensor:
    """Four real LFW faces (of different people), centre 160 px resized to 64x64, in [0, 1]."""
    images = []
    for _, data in lfw_members[:4]:
        image = Image.open(io.BytesIO(data)).convert("RGB").crop((45, 45, 205, 205)).resize((64, 64))
        images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(64, 64, 3))
    return torch.stack(images).permute(0, 3, 1, 2).float() / 255.0


def distortions(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same faces blurred, noised, shifted in colour, and swapped for other people."""
    gen = torch.Generator().manual_seed(0)
    blur = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return {
        "blur": blur,
        "noise": (x + 0.08 * torch.randn(x.shape, generator=gen)).clamp(0, 1),
        "colour": (x * torch.tensor([1.1, 0.9, 0.8]).view(1, 3, 1, 1)).clamp(0, 1),
        "other_person": x.roll(1, 0),
    }


def reference_lpips(net: str, weights: Path):
    """The ``lpips`` package's LPIPS with its own shipped v0.1 heads and our file's ImageNet trunk."""
    import lpips  # the test extra

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=`, used inside lpips
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    trunk = load_file(str(weights))
    state = {k: trunk["features." + k.split(".", 2)[2]] if k.startswith("net.slice") else v
             for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    return ref.eval()


@pytest.fixture(scope="module")
def squeeze_weights(tmp_path_factory) -> Path:
    """LPIPS-SqueezeNet weights made by ``vaeforge lpips`` from the official v0.1 head and a trunk of torchvision's
    SqueezeNet 1.1 with seeded random weights: no ImageNet copy is at hand offline, and the comparison with the
    reference needs only the same trunk on both sides (the layer mapping is what is under test)."""
    import lpips  # the test extra

    folder = tmp_path_factory.mktemp("squeeze")
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in squeezenet1_1().features.state_dict().items()}, folder / "trunk.pth")
    trunk = folder / f"squeezenet-random-{hashlib.sha256((folder / 'trunk.pth').read_bytes()).hexdigest()[:8]}.pth"
    (folder / "trunk.pth").rename(trunk)
    head = Path(lpips.__file__).parent / "weights" / "v0.1" / "squeeze.pth"
    return download("squeeze", trunk=str(trunk), head=str(head), trunk_name=trunk.name, out=str(folder),
                    progress=False)


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_equals_the_reference_implementation_on_real_faces(net, lpips_weights, faces, request):
    weights = request.getfixturevalue("squeeze_weights") if net == "squeeze" else lpips_weights / FILES[net]
    ref = reference_lpips(net, weights)
    heads = load_file(str(weights))
    for i in range(len(NETS[net].taps)):  # the file's heads are the LPIPS project's own v0.1 heads
        assert torch.equal(heads[f"lin{i}.weight"], ref.state_dict()[f"lin{i}.model.1.weight"])
    ours = LPIPS(net, weights)
    for name, y in distortions(faces).items():
        with torch.no_grad():
            expected = ref(faces, y, normalize=True).flatten()
        got = ours(faces, y)
        assert got.shape == (faces.shape[0],)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    # Sanity on the values themselves: the distance grows with the strength of the noise.
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(faces.shape, generator=gen)
    d = [float(ours(faces, (faces + s * noise).clamp(0, 1)).mean()) for s in (0.01, 0.05, 0.2)]
    assert 0 < d[0] < d[1] < d[2]


def test_lpips_properties_and_gradient(lpips_weights, faces):
    lp = LPIPS("alex", lpips_weights / FILES["alex"])
    assert all(not p.requires_grad for p in lp.parameters())
    y = distortions(faces)["noise"]
    assert float(lp(faces, faces).abs().max()) < 1e-6
    torch.testing.assert_close(lp(faces, y), lp(y, faces))
    x = faces.clone().requires_grad_(True)
    lp(x, y).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training with mixed_precision=bf16
        low = lp(faces, y)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, lp(faces, y), rtol=0.05, atol=1e-3)
    feats = lp.features(faces)
    assert [f.shape[1] for f in feats] == [64, 192, 384, 256, 256] and all(float(f.min()) >= 0 for f in feats)


def test_find_lpips_weights_order_and_errors(lpips_weights, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="pass the file .*no safetensors copy can be downloaded"):
        find_lpips_weights("alex")
    cached = tmp_path / "cache" / "vaeforge" / FILES["alex"]
    cached.parent.mkdir(parents=True)
    cached.symlink_to(lpips_weights / FILES["alex"])
    assert find_lpips_weights("alex") == cached
    monkeypatch.setenv(ENV_WEIGHTS, str(lpips_weights))
    assert find_lpips_weights("vgg") == lpips_weights / FILES["vgg"]
    assert find_lpips_weights("alex", cached) == cached
    with pytest.raises(DataError, match="not found"):
        find_lpips_weights("alex", tmp_path / "nope.safetensors")
    monkeypatch.setenv(ENV_WEIGHTS, str(tmp_path))
    with pytest.raises(DataError, match=f"has no {FILES['alex']}"):
        find_lpips_weights("alex")
    with pytest.raises(ConfigError, match="valid: alex, squeeze, vgg"):
        find_lpips_weights("resnet")


def test_lpips_refuses_weights_of_the_wrong_net_or_format(lpips_weights, tmp_path):
    with pytest.raises(DataError, match="lack"):
        LPIPS("alex", lpips_weights / FILES["vgg"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors"):
        LPIPS("alex", bad)
