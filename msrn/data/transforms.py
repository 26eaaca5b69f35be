"""Train/test image transforms, with Pillow and numpy only: the paper's code's (docs/design.md §7) and the
peers' (CSRA's resized crop; ASL's, ML-Decoder's and Query2Label's Cutout and RandAugment), chosen by
`--augment`. Randomness comes from Python's `random` module, which the loader seeds per worker."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

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


class ResizedCropTransform:
    """CSRA's training transform: a random crop of `scale` of the image's area and an aspect ratio drawn
    log-uniformly from 3/4 to 4/3 (after 10 misses, the centred largest crop of a ratio in that range), bilinear
    resize to image_size, random horizontal flip, normalise."""

    def __init__(self, image_size: int, scale: tuple[float, float] = (0.7, 1.0)) -> None:
        self.image_size = int(image_size)
        self.scale = scale

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random crop box (left, top, right, bottom)."""
        area = width * height
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            ratio = math.exp(random.uniform(*log_ratio))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = random.randint(0, width - w), random.randint(0, height - h)
                return left, top, left + w, top + h
        ratio = min(max(width / height, 3 / 4), 4 / 3)
        w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Augment one PIL image into a normalised 3 x S x S tensor."""
        img = img.convert("RGB")
        img = img.crop(self.box(img.width, img.height))
        img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor_normalized(img)

    def __repr__(self) -> str:
        """Show the settings."""
        return f"ResizedCropTransform(image_size={self.image_size}, scale={self.scale})"


def cutout(img: Image.Image, factor: float = 0.5) -> Image.Image:
    """A box of `factor` of each side, centred anywhere (cut by the border), filled with one random colour."""
    w, h = img.size
    cw, ch = int(factor * w + 0.5), int(factor * h + 0.5)
    cx, cy = random.randrange(w), random.randrange(h)
    box = (max(0, cx - cw // 2), max(0, cy - ch // 2), min(w, cx + cw // 2), min(h, cy + ch // 2))
    ImageDraw.Draw(img).rectangle(box, fill=tuple(random.randrange(256) for _ in range(3)))
    return img


def _signed(v: float) -> float:
    return v if random.random() < 0.5 else -v


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, Image.Resampling.NEAREST, fillcolor=(128,) * 3)


# RandAugment's operations (Cubuk et al., 2020), each at a strength `m` in [0, 1]
RAND_AUGMENT_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "identity": lambda img, m: img,
    "autocontrast": lambda img, m: ImageOps.autocontrast(img),
    "equalize": lambda img, m: ImageOps.equalize(img),
    "rotate": lambda img, m: img.rotate(_signed(30 * m), fillcolor=(128,) * 3),
    "solarize": lambda img, m: ImageOps.solarize(img, 256 - int(256 * m)),
    "posterize": lambda img, m: ImageOps.posterize(img, 8 - int(4 * m)),
    "color": lambda img, m: ImageEnhance.Color(img).enhance(1 + _signed(0.9 * m)),
    "contrast": lambda img, m: ImageEnhance.Contrast(img).enhance(1 + _signed(0.9 * m)),
    "brightness": lambda img, m: ImageEnhance.Brightness(img).enhance(1 + _signed(0.9 * m)),
    "sharpness": lambda img, m: ImageEnhance.Sharpness(img).enhance(1 + _signed(0.9 * m)),
    "shear_x": lambda img, m: _affine(img, (1, _signed(0.3 * m), 0, 0, 1, 0)),
    "shear_y": lambda img, m: _affine(img, (1, 0, 0, _signed(0.3 * m), 1, 0)),
    "translate_x": lambda img, m: _affine(img, (1, 0, _signed(0.45 * m * img.width), 0, 1, 0)),
    "translate_y": lambda img, m: _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * m * img.height))),
}


class RandAugmentTransform:
    """ASL's, ML-Decoder's and Query2Label's training transform: resize to image_size x image_size, Cutout of
    half the sides, then RandAugment (`ops` operations drawn uniformly, each at `magnitude` of 10), normalise."""

    def __init__(self, image_size: int, ops: int = 2, magnitude: int = 9, cutout_factor: float = 0.5) -> None:
        self.image_size = int(image_size)
        self.ops, self.magnitude, self.cutout_factor = ops, magnitude, cutout_factor

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Augment one PIL image into a normalised 3 x S x S tensor."""
        img = img.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        img = cutout(img, self.cutout_factor)
        for name in random.choices(list(RAND_AUGMENT_OPS), k=self.ops):
            img = RAND_AUGMENT_OPS[name](img, self.magnitude / 10)
        return to_tensor_normalized(img)

    def __repr__(self) -> str:
        """Show the settings."""
        return (
            f"RandAugmentTransform(image_size={self.image_size}, ops={self.ops}, magnitude={self.magnitude}, "
            f"cutout_factor={self.cutout_factor})"
        )


AUGMENTS = ("multiscale", "resizedcrop", "randaugment")


def train_transform(
    augment: str, image_size: int, crop_scales: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """The training transform `--augment` names: multiscale (the reference's crop over `crop_scales` and a
    flip), resizedcrop (CSRA's) or randaugment (Cutout and RandAugment, as ASL, ML-Decoder, Query2Label)."""
    if augment == "multiscale":
        return TrainTransform(image_size, crop_scales)
    if augment == "resizedcrop":
        return ResizedCropTransform(image_size)
    if augment == "randaugment":
        return RandAugmentTransform(image_size)
    raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTS)}")


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
