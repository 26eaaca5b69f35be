"""Decoding image files for the model with Pillow and numpy only (no torch: the ONNX path uses it too).

Three choices are made here, once for every caller:
- any Pillow mode becomes 8-bit RGB (alpha composited on white, 16/32-bit scaled to 8 bit);
- EXIF orientation is applied when asked for (a person's photo, stored sideways with an
  orientation tag, is shown to the model upright); the benchmark readers do not ask, as the
  reference does not;
- a pixel-count limit is checked on the header, before anything is decoded, so a small file
  declaring a huge image is refused without allocating it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from msrn.errors import MSRNError

DEFAULT_MAX_PIXELS = 50_000_000  # an 8000 x 6000 phone photo passes; decoding it costs ~6 bytes per pixel
# file suffixes read as images wherever a folder is listed (msrn predict's folders, the apparel reader)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
TRANSPOSED = frozenset(range(2, 9))  # EXIF orientations other than 1 (upright) that exif_transpose undoes
ImageSource = str | os.PathLike | bytes | BinaryIO


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha composited on white, 16/32-bit ints scaled to 8 bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG "I;16" or "I"): map 0..65535 onto 0..255.
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":  # the white canvas is a temporary: freed as soon as the composite exists
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
    return img.convert("RGB")


def orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1 = upright); unreadable EXIF data counts as upright."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001  (malformed EXIF fails in many ways; it must not block the pixels)
        return 1


def upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: Pillow's exif_transpose when the orientation tag says so."""
    return ImageOps.exif_transpose(img) if orientation(img) in TRANSPOSED else img


def check_pixels(size: tuple[int, int], max_pixels: int | None, where: str) -> None:
    """Refuse an image whose header declares more than max_pixels pixels (None: no limit of ours)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise MSRNError(
            f"{where}: image is {width}x{height} ({width * height / 1e6:.1f} megapixels), more than the "
            f"limit of {max_pixels / 1e6:g} megapixels (--max-megapixels)"
        )


def open_image(
    source: ImageSource,
    name: str | None = None,
    exif_orientation: bool = False,
    max_pixels: int | None = None,
) -> Image.Image:
    """Decode an image file, uploaded bytes or a binary file object fully, as RGB.

    exif_orientation applies the EXIF orientation tag; max_pixels is checked before decoding. Any
    failure is an MSRNError naming the file (or `name`).
    """
    opened: Path | BinaryIO
    if isinstance(source, (str, os.PathLike)):
        where, opened = name or os.fspath(source), Path(source)
    else:
        where, opened = name or "upload", io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(source, bytes) and not source:
        raise MSRNError(f"{where}: the image is empty")
    try:
        with Image.open(opened) as img:
            check_pixels(img.size, max_pixels, where)
            img.load()
            shown = upright(img) if exif_orientation else img
            rgb = to_rgb(shown)
            if rgb is img:
                rgb = img.copy()
    except FileNotFoundError:
        raise MSRNError(f"{where}: image file not found") from None
    except UnidentifiedImageError:
        raise MSRNError(f"{where}: cannot decode image (not an image format Pillow reads)") from None
    except Image.DecompressionBombError as e:
        raise MSRNError(f"{where}: image is too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MSRNError(f"{where}: cannot decode image ({e})") from None
    if rgb.width == 0 or rgb.height == 0:
        raise MSRNError(f"{where}: image has zero size")
    return rgb


def normalized_array(img: Image.Image, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The test transform in numpy: RGB, PIL bilinear resize to size x size, /255, minus mean, over std; 3 x S x S."""
    img = (img if img.mode == "RGB" else img.convert("RGB")).resize((size, size), Image.Resampling.BILINEAR)
    arr: np.ndarray = np.asarray(img, dtype=np.uint8).astype(np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
