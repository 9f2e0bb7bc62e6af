"""What a task plugin gets: the loaded model, its inputs, an output folder and a seed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data.loader import eval_batches
from .data.manifest import read_manifest, shard_paths
from .errors import DataError
from .imageio import load_inputs, save_grid, save_png

if TYPE_CHECKING:
    from .inference import LoadedVAE

VAL = "val"


@dataclass
class TaskContext:
    """Everything a task needs; tasks write files only through ``output``."""

    model: "LoadedVAE"
    output: Path
    seed: int = 0
    input: str | list[str] | None = None  # image files, a folder, or "val"
    limit: int = 0  # at most this many inputs (0: all)

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with the task's seed: same seed, same output."""
        return torch.Generator().manual_seed(self.seed)

    def inputs(self) -> list[tuple[str, torch.Tensor]]:
        """Named input images ``[3, H, W]`` in [0, 1] at the model's size (files are cropped and resized as
        the dataset was when they are larger)."""
        if self.input is None:
            raise DataError("this task needs input=<image files, a folder, or val>")
        if self.input == VAL:
            items = self._val_images()
        else:
            m = self.model
            items = load_inputs(self.input, m.image_size, list(m.manifest["crop"]))
        return items[: self.limit] if self.limit else items

    def _val_images(self) -> list[tuple[str, torch.Tensor]]:
        shards_dir = self.model.config.data.shards
        shards = shard_paths(shards_dir, read_manifest(shards_dir), VAL)
        items: list[tuple[str, torch.Tensor]] = []
        for batch in eval_batches(shards, 64, 0, 1):
            items += [(f"{k}.png", im.float() / 255.0) for k, im in zip(batch["key"], batch["image"])]
            if self.limit and len(items) >= self.limit:
                break
        return items

    def save_image(self, name: str, image: torch.Tensor) -> Path:
        path = self.output / name
        save_png(image, path)
        return path

    def save_grid(self, name: str, rows: list[list[torch.Tensor]] | torch.Tensor, nrow: int | None = None) -> Path:
        path = self.output / name
        save_grid(rows, path, nrow)
        return path
