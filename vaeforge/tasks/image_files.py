"""Images between files and tensors: task inputs (files, folders, the val split) and PNG outputs."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.images import IMAGE_SUFFIXES, Crop, crop_box, crop_resize, load_image
from ..errors import DataError
from ..grid import image_grid

LFW_SOURCE_SIZE = [250, 250]  # the source size of manifests from before they recorded one (all of them LFW's)
PADDING = 2  # pixels between grid cells
CAPTION_HEIGHT = 14  # pixels of the caption strip above a labelled grid


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float ``[C, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0


def fit_to_model(img: Image.Image, image_size: int, crop: Crop, source_size: Sequence[int] | None, where: str
                 ) -> Image.Image:
    """Images at the model's size are used as they are; larger ones are cut as the dataset's images were (a crop
    box scaled from the dataset's ``source_size`` when its images all had one) and resized; smaller ones are an
    error naming ``where``."""
    w, h = img.size
    if (w, h) == (image_size, image_size):
        return img.convert("RGB")
    if min(w, h) < image_size:
        raise DataError(f"{where}: image of {w}x{h} is smaller than the model's {image_size}x{image_size}")
    return crop_resize(img, crop_box(crop, img.size, where, source_size), image_size)


def image_files(spec: str | list[str]) -> list[Path]:
    """Image paths from a file, a folder (its images, sorted) or a list of either; none found is an error."""
    items = spec if isinstance(spec, list) else [spec]
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"input '{item}' does not exist")
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in input {spec}")
    return files


def load_inputs(spec: str | list[str], image_size: int, manifest: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Named input images as float tensors at the model's size, cut as the dataset's ``manifest`` says."""
    crop, source_size = manifest["crop"], manifest.get("source_size", LFW_SOURCE_SIZE)
    return [(p.name, to_tensor(fit_to_model(load_image(p), image_size, crop, source_size, str(p))))
            for p in image_files(spec)]


def to_pil(image: torch.Tensor) -> Image.Image:
    """Float image ``[C, H, W]`` in [0, 1] -> 8-bit RGB PIL image."""
    return Image.fromarray(image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def save_png(image: torch.Tensor | Image.Image, path: Path) -> None:
    """Save a float image ``[C, H, W]`` in [0, 1] (or a PIL image) as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else to_pil(image)).save(path)


def with_captions(grid: Image.Image, captions: list[str], cell: int) -> Image.Image:
    """The grid with a white strip above it holding one caption centred over each column of ``cell`` pixels."""
    out = Image.new("RGB", (grid.width, grid.height + CAPTION_HEIGHT), "white")
    out.paste(grid, (0, CAPTION_HEIGHT))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=CAPTION_HEIGHT - 4)
    for i, text in enumerate(captions):
        centre = PADDING + i * (cell + PADDING) + cell / 2
        draw.text((centre, CAPTION_HEIGHT / 2 + 1), text, fill="black", font=font, anchor="mm")
    return out


def save_grid(rows: list[list[torch.Tensor]] | torch.Tensor, path: Path, nrow: int | None = None,
              columns: list[str] | None = None) -> None:
    """Save images as one grid PNG: a list of equal-length rows, or a batch with ``nrow`` images a row;
    ``columns`` captions the columns (one text per column)."""
    if isinstance(rows, torch.Tensor):
        batch, per_row = rows, nrow or 8
    else:
        batch, per_row = torch.stack([im for row in rows for im in row]), len(rows[0])
    grid = to_pil(image_grid(batch.float().clamp(0, 1), per_row, PADDING, pad_value=1.0))
    save_png(with_captions(grid, columns, batch.shape[-1]) if columns else grid, path)
