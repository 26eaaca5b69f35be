"""Options of the tagging commands: how predict and serve decode images, and label names read from a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from msrn.errors import MSRNError


def read_label_names(path: str | os.PathLike) -> list[str]:
    """Label names, one per line (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MSRNError(f"cannot read label names from {path}: {e}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise MSRNError(f"{path} holds no label names")
    return names


def decoding_options(args: Any) -> dict[str, Any]:
    """The Predictor options that a command's --exif-orientation and --max-megapixels set.

    Pillow's own decompression-bomb limit is raised to --max-megapixels when that is higher: the
    command owns its process, and the limit checked is then ours.
    """
    max_pixels = int(args.max_megapixels * 1e6)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    return {
        "exif_orientation": None if args.exif_orientation is None else args.exif_orientation == "on",
        "max_pixels": max_pixels,
    }
