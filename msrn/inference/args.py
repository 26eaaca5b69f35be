"""Options of the tagging commands: how predict and serve decode images, and label names read from a file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from PIL import Image

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS


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


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """--exif-orientation and --max-megapixels (predict, serve): how image files are decoded."""
    parser.add_argument(
        "--exif-orientation",
        choices=("on", "off"),
        help="turn photos upright by their EXIF orientation tag (default: as the checkpoint's "
        "training did; on for reference and older checkpoints)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_PIXELS / 1e6,
        metavar="MP",
        help="refuse images larger than MP megapixels, read from the file's header before "
        f"decoding (default {DEFAULT_MAX_PIXELS / 1e6:g})",
    )


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Predictor options that add_decoding_arguments' flags set.

    Pillow's own decompression-bomb limit is raised to --max-megapixels when that is higher: the
    command owns its process, and the limit checked is then ours.
    """
    if not args.max_megapixels > 0:
        raise MSRNError("--max-megapixels must be positive")
    max_pixels = int(args.max_megapixels * 1e6)
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    return {
        "exif_orientation": None if args.exif_orientation is None else args.exif_orientation == "on",
        "max_pixels": max_pixels,
    }
