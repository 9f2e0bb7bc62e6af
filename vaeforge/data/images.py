"""Image decoding and the crop + resize shared by dataset preparation and the tasks."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import DataError

# A truncated JPEG must be an error: padding it with grey would put damaged faces into training data.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(data: bytes, where: str) -> Image.Image:
    """Fully decode image bytes; ``where`` (a file or archive member) names the image in the DataError."""
    if not data:
        raise DataError(f"{where}: not a readable image (the file is empty)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
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


def crop_resize(img: Image.Image, crop: tuple[int, int, int, int], size: int) -> Image.Image:
    """Convert to RGB, crop the box (left, top, right, bottom) and resize to ``size`` x ``size`` (LANCZOS)."""
    return img.convert("RGB").crop(crop).resize((size, size), Image.Resampling.LANCZOS)

