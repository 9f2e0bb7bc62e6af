"""LPIPS v0.1 (Zhang et al., 2018): a perceptual distance from ImageNet features with learned 1x1 heads.

The recipe: images in [-1, 1] -> LPIPS scaling layer -> the convolutional ``features`` of torchvision's AlexNet,
VGG16 or SqueezeNet 1.1 (torchvision's own model definitions, as the LPIPS authors use them) -> the outputs of
chosen layers, each unit-normalised over channels -> squared difference -> a 1x1 head per layer -> spatial mean
-> sum over layers. Weights come from a safetensors file holding torchvision's ``features.<N>`` tensors and the
heads ``lin0`` .. ``lin<k>`` (the layout of ``../shared/weights``); pickles are never loaded here
(:mod:`vaeforge.models.lpips_weights` makes that file from the official ``.pth`` files, loading them as weights only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DataError, unknown_choice
from ..runs.tensorfile import read_tensors

ENV_WEIGHTS = "VAEFORGE_LPIPS_WEIGHTS"  # a folder holding lpips_alexnet.safetensors / lpips_vgg16.safetensors
SHIFT = (-0.030, -0.088, -0.188)  # the LPIPS scaling layer, applied to inputs in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # as in the reference implementation's unit-normalisation


@dataclass(frozen=True)
class TrunkSpec:
    """One LPIPS trunk: a torchvision model whose ``features`` stack it runs, the ImageNet weights of it that LPIPS
    was trained on, and ``taps``: the ``features.<N>`` indices whose outputs LPIPS compares (as the reference
    implementation slices them)."""

    file: str  # the converted weights file: lpips_<model>.safetensors
    model: str  # the torchvision.models builder
    weights: str  # its weights enum member, "<Enum>.<member>"
    taps: tuple[int, ...]

    # torchvision is imported when a trunk is built, not with this module: every process imports the loss
    # plugins, and importing torchvision loads all its models and datasets (over a second of start-up).
    def build(self) -> nn.Module:
        """The torchvision model (randomly initialised: the caller loads the LPIPS file)."""
        from torchvision import models
        return getattr(models, self.model)()

    @property
    def url(self) -> str:
        """Where torchvision downloads the ImageNet weights from (its file name carries a SHA-256 prefix)."""
        from torchvision import models
        enum, member = self.weights.split(".")
        return getattr(getattr(models, enum), member).url


NETS = {
    "alex": TrunkSpec("lpips_alexnet.safetensors", "alexnet", "AlexNet_Weights.IMAGENET1K_V1", (1, 4, 7, 9, 11)),
    "vgg": TrunkSpec("lpips_vgg16.safetensors", "vgg16", "VGG16_Weights.IMAGENET1K_V1", (3, 8, 15, 22, 29)),
    "squeeze": TrunkSpec("lpips_squeezenet1_1.safetensors", "squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1",
                         (1, 4, 7, 9, 10, 11, 12)),
}


def _check_net(net: str) -> TrunkSpec:
    if net not in NETS:
        raise unknown_choice("LPIPS net", net, NETS)
    return NETS[net]


def cache_dir() -> Path:
    """Where vaeforge looks for downloaded or user-placed files: ``$XDG_CACHE_HOME/vaeforge`` or ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaeforge"


def find_lpips_weights(net: str, explicit: str | Path | None = None) -> Path:
    """The LPIPS weights file for ``net``: ``explicit``, else in ``$VAEFORGE_LPIPS_WEIGHTS``, else in the cache.

    Nothing is downloaded here (not in the middle of a training): the official weights are published only as
    pickles (``.pth``) and no safetensors copy is published, so ``vaeforge lpips net=<net>``
    (:mod:`vaeforge.models.lpips_weights`) downloads them on request, loads them as weights only and converts them.
    """
    spec = _check_net(net)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DataError(f"LPIPS weights file {path} not found")
        return path
    folder = os.environ.get(ENV_WEIGHTS)
    if folder:
        path = Path(folder) / spec.file
        if not path.is_file():
            raise DataError(f"{ENV_WEIGHTS}={folder} has no {spec.file}")
        return path
    path = cache_dir() / spec.file
    if path.is_file():
        return path
    raise DataError(
        f"no LPIPS weights for '{net}': pass the file ({spec.file}, safetensors) explicitly, set {ENV_WEIGHTS} "
        f"to its folder, or put it in {path.parent} (no safetensors copy can be downloaded: `vaeforge lpips "
        f"net={net}` downloads the official .pth files and converts them, `trunk=<file> head=<file>` converts "
        "local copies)"
    )


def build_trunk(spec: TrunkSpec) -> nn.Sequential:
    """torchvision's ``features`` layers up to the last tap, with its ``features.<N>`` indices, on the meta device
    (shapes only: no memory, no initialisation; ``to_empty`` then a weights file make it real)."""
    with torch.device("meta"):
        return spec.build().features[: spec.taps[-1] + 1]


def tapped(trunk: nn.Sequential, taps: tuple[int, ...], h: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the ``taps`` layers of ``trunk`` run on ``h``, shallowest first."""
    out = []
    for i, layer in enumerate(trunk):
        h = layer(h)
        if i in taps:
            out.append(h)
    return out


def _tap_channels(trunk: nn.Sequential, taps: tuple[int, ...]) -> list[int]:
    """Channels of each tapped output, from a shape-only pass of a meta ``trunk``."""
    return [t.shape[1] for t in tapped(trunk, taps, torch.empty(1, 3, 64, 64, device="meta"))]


def weights_layout(net: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor an LPIPS weights file for ``net`` holds (``features.<N>.*``, ``lin<i>.weight``)."""
    spec = _check_net(net)
    trunk = build_trunk(spec)
    layout = {f"features.{name}": tuple(t.shape) for name, t in trunk.state_dict().items()}
    heads = {f"lin{i}.weight": (1, c, 1, 1) for i, c in enumerate(_tap_channels(trunk, spec.taps))}
    return layout | heads


def _file_key(name: str) -> str:
    """Our parameter name -> the weights file's: ``trunk.N.*`` -> ``features.N.*``, ``heads.i.*`` -> ``lini.*``."""
    if name.startswith("heads."):
        index, rest = name[len("heads."):].split(".", 1)
        return f"lin{index}.{rest}"
    return "features." + name[len("trunk."):]


def unit_normalise(features: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's feature vector by its L2 norm over channels (in float32: under fp16
    autocast the squares could overflow and EPS would round to 0)."""
    features = features.float()
    return features / (features.square().sum(1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between images in [0, 1]; frozen weights, gradients flow to the inputs."""

    def __init__(self, net: str = "alex", weights: str | Path | None = None) -> None:
        super().__init__()
        spec = _check_net(net)
        self.net, self.taps = net, spec.taps
        trunk = build_trunk(spec)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _tap_channels(trunk, spec.taps))
        self.trunk = trunk.to_empty(device="cpu")  # every tensor is then loaded from the weights file
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self._load(find_lpips_weights(net, weights))
        self.eval().requires_grad_(False)

    def _load(self, path: Path) -> None:
        """Load the trunk's ``features.<N>`` tensors and the heads; a wrong file fails naming it."""
        _, state = read_tensors(path, "LPIPS weights")
        ours = {_file_key(k): k for k in self.state_dict()}
        missing = sorted(set(ours) - set(state))
        if missing:
            raise DataError(f"LPIPS weights {path} lack {', '.join(missing[:3])} (not LPIPS-{self.net} weights?)")
        try:
            self.load_state_dict({ours[k]: state[k] for k in ours})
        except RuntimeError as exc:
            raise DataError(f"LPIPS weights {path} do not fit LPIPS-{self.net}: {str(exc).splitlines()[-1]}") from None

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped activations (after the scaling layer) of images ``x`` in [0, 1], shallowest first."""
        h = ((x * 2.0 - 1.0 - self.shift) / self.scale).to(self.shift.dtype)  # weights cast by DeepSpeed: follow
        return tapped(self.trunk, self.taps, h)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance of each image pair ``[B]`` (both batches in [0, 1], one trunk pass for both)."""
        total = torch.zeros(x.shape[0], device=x.device)
        for feats, head in zip(self.features(torch.cat([x, y])), self.heads):
            fx, fy = unit_normalise(feats).chunk(2)
            total = total + head((fx - fy).square().to(head.weight.dtype)).mean((1, 2, 3)).float()
        return total
