"""Train/test image transforms of the paper's code (docs/design.md §7), with Pillow and numpy only."""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_tensor_normalized(img: Image.Image) -> torch.Tensor:
    """HWC uint8 RGB image -> CHW float32 tensor scaled to [0, 1] and ImageNet-normalised."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8).astype(np.float32) / 255.0
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def crop_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 fixed (left, top) crop positions: corners, centre, edge centres and quarter points."""
    w = (width - crop_w) // 4
    h = (height - crop_h) // 4
    return [
        (0, 0), (4 * w, 0), (0, 4 * h), (4 * w, 4 * h), (2 * w, 2 * h),
        (0, 2 * h), (4 * w, 2 * h), (2 * w, 4 * h), (2 * w, 0),
        (1 * w, 1 * h), (3 * w, 1 * h), (1 * w, 3 * h), (3 * w, 3 * h),
    ]  # fmt: skip


def crop_size_pairs(
    width: int, height: int, image_size: int, scales: Sequence[float], max_distort: int
) -> list[tuple[int, int]]:
    """Candidate (crop_w, crop_h) pairs: sides int(min side * scale), snapped to image_size within 3 px."""
    sizes = [int(min(width, height) * s) for s in scales]
    snapped = [image_size if abs(x - image_size) < 3 else x for x in sizes]
    return [
        (snapped[wi], snapped[hi])
        for hi in range(len(snapped))
        for wi in range(len(snapped))
        if abs(wi - hi) <= max_distort
    ]


def multiscale_crop_box(
    width: int,
    height: int,
    image_size: int,
    scales: Sequence[float],
    max_distort: int,
    rng: random.Random | ModuleType,
) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) as MultiScaleCrop draws it; rng: Random or `random`."""
    crop_w, crop_h = rng.choice(crop_size_pairs(width, height, image_size, scales, max_distort))
    left, top = rng.choice(crop_offsets(width, height, crop_w, crop_h))
    return left, top, left + crop_w, top + crop_h


class TrainTransform:
    """Multi-scale crop, bilinear resize to image_size, random horizontal flip, normalise.

    Randomness comes from Python's `random` module, which the loader seeds per worker.
    """

    def __init__(
        self,
        image_size: int,
        scales: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6),
        max_distort: int = 2,
        flip: bool = True,
    ) -> None:
        self.image_size = int(image_size)
        self.scales = tuple(scales)
        self.max_distort = int(max_distort)
        self.flip = flip

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Augment one PIL image into a normalised 3 x S x S tensor."""
        img = img.convert("RGB")
        box = multiscale_crop_box(img.width, img.height, self.image_size, self.scales, self.max_distort, random)
        img = img.crop(box).resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        if self.flip and random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor_normalized(img)

    def __repr__(self) -> str:
        """Show the settings."""
        return (
            f"TrainTransform(image_size={self.image_size}, scales={self.scales}, "
            f"max_distort={self.max_distort}, flip={self.flip})"
        )


class TestTransform:
    """RGB, PIL bilinear resize to image_size x image_size (aspect not kept), normalise."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, image_size: int) -> None:
        self.image_size = int(image_size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Resize one PIL image into a normalised 3 x S x S tensor."""
        img = img if img.mode == "RGB" else img.convert("RGB")  # convert would copy a whole RGB photo
        img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return to_tensor_normalized(img)

    def __repr__(self) -> str:
        """Show the settings."""
        return f"TestTransform(image_size={self.image_size})"
