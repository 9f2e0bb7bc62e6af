"""The image grid lays images out exactly as torchvision's make_grid does."""
from __future__ import annotations

import pytest
import torch
from torchvision.utils import make_grid

from vaeforge.grid import image_grid


@pytest.mark.parametrize("n, channels, nrow, padding, pad_value", [
    (1, 3, 8, 2, 0.0), (5, 3, 8, 2, 0.0), (16, 3, 4, 2, 1.0), (7, 3, 3, 4, 0.5), (6, 1, 4, 2, 1.0),
    (9, 3, 2, 0, 0.0), (3, 4, 2, 1, 0.25),
])
def test_the_grid_is_torchvision_s(n, channels, nrow, padding, pad_value):
    images = torch.rand(n, channels, 5, 7)
    expected = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    torch.testing.assert_close(image_grid(images, nrow, padding, pad_value), expected, rtol=0, atol=0)
