"""A decoder's last layer, from features at 1/factor of the image size to image logits at full size.

A pixel shuffle (one convolution to ``channels x factor^2`` values per position, rearranged into factor x factor
pixels) runs nothing at full resolution, but each of the factor^2 sub-pixel positions has its own filter: where
those drift apart, every decoded image carries a periodic mesh (a checkerboard at the image's Nyquist frequency),
worst for latents the decoder was not trained on (prior samples). The kinds:

- ``pixel_shuffle``: that, with PyTorch's default initialisation (what run folders from before the choice hold);
- ``icnr``: the same layer initialised ICNR-style (Aitken et al., 2017): every sub-pixel filter starts as a copy
  of one, so training starts from a nearest-neighbour upsampling, free of the mesh;
- ``icnr_blur``: ICNR, then a fixed 3x3 binomial blur at full resolution, which removes the Nyquist frequency
  (where the mesh lives) whatever the filters learn; no parameters of its own;
- ``resize``: bilinear upsampling of the features, then a 3x3 convolution at full resolution
  (resize-convolution, Odena et al., 2016).
"""
from __future__ import annotations

import torch
from torch import nn

HEADS = ("pixel_shuffle", "icnr", "icnr_blur", "resize")


def icnr_(conv: nn.Conv2d, factor: int) -> nn.Conv2d:
    """Initialise a pixel-shuffle convolution so that the ``factor^2`` sub-pixel filters of each output channel are
    copies of one (default-initialised for that channel count): its pixel shuffle starts as a nearest-neighbour
    upsampling of a plain convolution."""
    out = conv.out_channels // factor**2
    one = nn.Conv2d(conv.in_channels, out, conv.kernel_size, padding=conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(one.weight.repeat_interleave(factor**2, 0))
        if conv.bias is not None:
            conv.bias.copy_(one.bias.repeat_interleave(factor**2, 0))
    return conv


class Blur(nn.Module):
    """A fixed depthwise 3x3 binomial filter ([1, 2, 1] / 4 on each axis, edges replicated): its response is zero
    at the Nyquist frequency, so no period-2 pattern passes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        self.register_buffer("kernel", (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).clone(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # edges replicated by concatenation, not F.pad(mode="replicate"): inductor's stride of that pad's backward
        # disagrees with the kernel's on channels-last gradients, which stops a compiled run (torch 2.14)
        x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], 2)
        x = torch.cat([x[..., :1], x, x[..., -1:]], 3)
        return nn.functional.conv2d(x, self.kernel.to(x.dtype), groups=x.shape[1])


def upsampling_head(c_in: int, channels: int, factor: int, kind: str = "pixel_shuffle") -> list[nn.Module]:
    """Layers from ``[B, c_in, H/factor, W/factor]`` features to ``[B, channels, H, W]`` logits (``kind``: one of
    :data:`HEADS`); ``factor`` 1 is a plain 3x3 convolution whatever the kind."""
    if factor == 1:
        return [nn.Conv2d(c_in, channels, 3, padding=1)]
    if kind == "resize":
        return [nn.Upsample(scale_factor=factor, mode="bilinear"), nn.Conv2d(c_in, channels, 3, padding=1)]
    conv = nn.Conv2d(c_in, channels * factor**2, 3, padding=1)
    if kind != "pixel_shuffle":
        icnr_(conv, factor)
    return [conv, nn.PixelShuffle(factor), *([Blur(channels)] if kind == "icnr_blur" else [])]
