"""A batch of images tiled into one grid image, as ``torchvision.utils.make_grid`` lays it out (same size, cell
positions and padding; grey images shown as RGB; one image returned as it is; ``tests/test_grid.py`` compares
the two). Kept here because training and the tasks would otherwise import torchvision for it alone: over a
second of start-up in every process (docs/benchmarks.md, "Start-up")."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[3 or C, rows * (H + padding) + padding, cols * (W + padding) + padding]``,
    ``nrow`` images a row, filled row by row; empty cells and the borders are ``pad_value``."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    if n == 1:
        return images[0]
    cols = min(nrow, n)
    rows = -(-n // cols)
    cells = images.new_full((rows * cols, c, h, w), pad_value)
    cells[:n] = images
    cells = F.pad(cells, (padding, 0, padding, 0), value=pad_value)  # each cell's top and left border
    grid = cells.view(rows, cols, c, h + padding, w + padding).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, rows * (h + padding), cols * (w + padding))
    return F.pad(grid, (0, padding, 0, padding), value=pad_value)  # the last row's and column's far border
