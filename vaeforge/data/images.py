"""Image decoding and the crop + resize shared by dataset preparation and the tasks."""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, DataError

# A truncated JPEG must be an error: padding it with grey would put damaged faces into training data.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # image files, by name, in folders and archives
CROP_MODES = ("center", "none", "box")
Crop = str | Sequence[int]  # "center", "none" or a box [left, top, right, bottom]: a manifest's "crop"
Box = tuple[int, int, int, int]


def decode_image(data: bytes, where: str) -> Image.Image:
    """Fully decode image bytes, upright (a camera's EXIF orientation applied); ``where`` (a file or archive
    member) names the image in the DataError."""
    if not data:
        raise DataError(f"{where}: not a readable image (the file is empty)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except UnidentifiedImageError:
        raise DataError(f"{where}: not a readable image (no image format Pillow knows)") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from None
    return img


def load_image(path: str | Path) -> Image.Image:
    """Read and fully decode an image file; a missing or undecodable file is a DataError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def check_box(box: Any, key: str, within: tuple[int, int] | None = None) -> list[int]:
    """A crop box [left, top, right, bottom] of integers with 0 <= left < right and 0 <= top < bottom, inside
    ``within`` (width, height) when given; a ConfigError naming the option ``key`` otherwise."""
    width, height = within or (math.inf, math.inf)
    values = list(box) if isinstance(box, (list, tuple)) else []
    integers = len(values) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if not (integers and 0 <= values[0] < values[2] <= width and 0 <= values[1] < values[3] <= height):
        inside = f" inside the {width}x{height} images" if within else ""
        raise ConfigError(f"{key} must be [left, top, right, bottom]{inside} with 0 <= left < right and "
                          f"0 <= top < bottom, got {box!r}")
    return values


def crop_box(crop: Crop, size: tuple[int, int], where: str, reference: Sequence[int] | None = None) -> Box:
    """The box (left, top, right, bottom) that ``crop`` cuts from an image of ``size`` (width, height).

    ``center``: the largest centred square; ``none``: the whole image; a box: that box, scaled from the
    ``reference`` size (width, height) to ``size`` when one is given. A box the image does not hold is a
    DataError naming ``where``."""
    width, height = size
    if crop == "none":
        return 0, 0, width, height
    if crop == "center":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    left, top, right, bottom = crop
    if reference is not None:
        sx, sy = width / reference[0], height / reference[1]
        left, top, right, bottom = round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)
    if right > width or bottom > height:
        raise DataError(f"{where}: image is {width}x{height}, smaller than the crop box {list(crop)}")
    return left, top, right, bottom


def crop_resize(img: Image.Image, crop: Box, size: int) -> Image.Image:
    """Convert to RGB, crop the box (left, top, right, bottom) and resize to ``size`` x ``size`` (LANCZOS)."""
    return img.convert("RGB").crop(crop).resize((size, size), Image.Resampling.LANCZOS)
