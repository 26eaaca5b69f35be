"""Tagging without torch: the inputs it accepts (paths, folders, lists, PIL images, arrays), how
they are decoded and batched, and the record each image gets. Shared by `msrn.inference.predictor` (PyTorch)
and `msrn.inference.onnx_predict` (onnxruntime only).

A record is `{"image": path, "labels": [{"label": name, "score": probability}, ...]}` with labels
in descending score, or `{"image", "error", "labels": []}` for an image that cannot be read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import IMAGE_SUFFIXES, open_image, to_rgb, upright

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def find_images(folder: Path) -> list[Path]:
    """Image files under a folder (recursively, hidden entries skipped), in sorted order."""
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def expand_inputs(items: Iterable[ImageInput]) -> list[ImageInput]:
    """Folders replaced by the images they hold; an empty folder is an error, anything else is kept."""
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            found = find_images(Path(item))
            if not found:
                raise MSRNError(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(item)
    return out


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) array as an RGB image; floats are 0..1."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or 0 in arr.shape:
        raise MSRNError(f"an image array must be H x W, H x W x 3 or H x W x 4, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise MSRNError(f"an image array must be numeric, got {arr.dtype}")
        scale = 255.0 if np.issubdtype(arr.dtype, np.floating) else 1.0
        arr = np.clip(np.rint(np.nan_to_num(arr.astype(np.float64)) * scale), 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(arr))


def describe(item: ImageInput) -> str | None:
    """The `image` field of a record: the path as given, None for an in-memory image."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else None


def read_input(item: ImageInput, exif_orientation: bool = False, max_pixels: int | None = None) -> Image.Image:
    """Any accepted input as an RGB PIL image, or an MSRNError saying why not.

    exif_orientation turns files and PIL images upright by their EXIF orientation tag; a file
    declaring more than max_pixels pixels is refused before it is decoded.
    """
    if isinstance(item, (str, os.PathLike)):
        return open_image(item, exif_orientation=exif_orientation, max_pixels=max_pixels)
    if isinstance(item, Image.Image):
        if item.width == 0 or item.height == 0:
            raise MSRNError("image has zero size")
        return to_rgb(upright(item) if exif_orientation else item)
    if isinstance(item, np.ndarray):
        return array_to_image(item)
    raise MSRNError(f"cannot read an image from a {type(item).__name__}; give a path, a PIL image or an array")


@dataclass
class Result:
    """One image's outcome: its record, all label probabilities and, when asked, its Explanation."""

    record: dict
    probabilities: np.ndarray | None = None
    explanation: Any = None


def as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A single input wrapped in a list; a list or other iterable of inputs as a list."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def read_path_list(path: str | os.PathLike) -> list[str]:
    """Image paths listed in a text file, one a line (blank lines skipped); "-" reads standard input.

    Paths are kept as written, so relative ones are relative to the current folder, as
    `find photos -name '*.jpg' > list.txt` writes them.
    """
    try:
        text = sys.stdin.read() if os.fspath(path) == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MSRNError(f"cannot read the image list {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


Batch = list[tuple[int, Image.Image | None, str | None]]


def decoded_batches(
    items: Sequence[ImageInput], decode: Callable[[ImageInput], Image.Image], batch_size: int
) -> Iterator[Batch]:
    """Batches of (index, decoded image or None, error or None), decoded lazily, each with at most
    batch_size decoded images."""
    batch: Batch = []
    for i, item in enumerate(items):
        try:
            batch.append((i, decode(item), None))
        except MSRNError as e:
            batch.append((i, None, str(e)))
        if sum(img is not None for _, img, _ in batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


LARGE_VOCABULARY = 100  # labels above which records hold at most DEFAULT_TOP_K labels unless told otherwise
DEFAULT_TOP_K = 20


def threshold_vector(threshold: float | Sequence[float] | np.ndarray, count: int) -> np.ndarray:
    """One threshold per label, each in [0, 1], from a scalar or a sequence of `count`."""
    try:
        vec = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (count,)).copy()
    except ValueError:
        raise MSRNError(f"{np.size(threshold)} thresholds for {count} labels") from None
    if not np.all((vec >= 0) & (vec <= 1)):
        raise MSRNError("thresholds must lie in [0, 1]")
    return vec


def default_top_k(num_labels: int) -> int | None:
    """The top-k applied when none is asked: every passing label up to LARGE_VOCABULARY labels, else
    DEFAULT_TOP_K (with thousands of labels a low threshold would list hundreds per image)."""
    return DEFAULT_TOP_K if num_labels > LARGE_VOCABULARY else None


def make_record(
    labels: Sequence[str], name: str | None, probs: np.ndarray, thresholds: np.ndarray, top_k: int | None
) -> dict:
    """The record of one image: labels at or above their threshold, best first, at most top_k (None:
    default_top_k)."""
    top_k = default_top_k(len(labels)) if top_k is None else top_k
    passing = np.flatnonzero(probs >= thresholds)  # increasing index, so the stable sort breaks ties by index
    keep = [int(i) for i in passing[np.argsort(-probs[passing], kind="stable")]]
    if top_k is not None:
        keep = keep[: max(0, top_k)]
    return {"image": name, "labels": [{"label": labels[i], "score": round(float(probs[i]), 6)} for i in keep]}


def error_record(name: str | None, error: str) -> dict:
    """The record of an image that could not be read (the error without the repeated name)."""
    return {"image": name, "error": error.removeprefix(f"{name}: "), "labels": []}


class Tagger:
    """What the PyTorch `Predictor` and the `OnnxPredictor` share: decoding, batching, records,
    `predict` and `probabilities`. A subclass sets the attributes below and gives `scores`."""

    labels: list[str]
    thresholds: np.ndarray
    top_k: int | None
    batch_size: int
    exif_orientation: bool
    max_pixels: int | None

    def scores(self, images: list[Image.Image], explain_k: int) -> tuple[np.ndarray, np.ndarray | None, list]:
        """Probabilities (B x C) of decoded images and, with explain_k > 0, the top label ids (B x k) and
        one array of attention maps per depth (B x k x H_s x W_s)."""
        raise NotImplementedError

    def explanation(
        self,
        img: Image.Image,
        name: str | None,
        probs: np.ndarray,
        ids: np.ndarray,
        maps: list[np.ndarray],
        thresholds: np.ndarray | None = None,
        index: int = 0,
    ) -> Any:
        """One image's explanation for drawing (only taggers whose `scores` gives maps make them)."""
        raise MSRNError(f"{type(self).__name__} gives no attention maps")

    def check_explainable(self) -> None:
        """Raise an MSRNError when this tagger cannot explain (called before any image is read)."""
        raise MSRNError(f"{type(self).__name__} gives no attention maps")

    def decode(self, item: ImageInput) -> Image.Image:
        """One input as the RGB image the model sees (orientation and pixel limit as configured), or an MSRNError."""
        return read_input(item, self.exif_orientation, self.max_pixels)

    def record(
        self, name: str | None, probs: np.ndarray, thresholds: np.ndarray | None = None, top_k: int | None = None
    ) -> dict:
        """The record of one image: labels at or above their threshold, best first, at most top_k
        (defaults: the tagger's own)."""
        thresholds = self.thresholds if thresholds is None else thresholds
        return make_record(self.labels, name, probs, thresholds, self.top_k if top_k is None else top_k)

    def iter_results(
        self,
        images: ImageInput | Iterable[ImageInput],
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
        explain_k: int = 0,
    ) -> Iterator[Result]:
        """A Result per image, in input order, computed batch by batch (explain_k > 0 adds maps)."""
        items = expand_inputs(as_list(images))
        thresholds = self.thresholds if threshold is None else threshold_vector(threshold, len(self.labels))
        if explain_k > 0:
            self.check_explainable()
        for batch in decoded_batches(items, self.decode, self.batch_size):
            good = [(i, img) for i, img, _ in batch if img is not None]
            probs, idx, maps = self.scores([img for _, img in good], explain_k) if good else (None, None, [])
            row = {i: r for r, (i, _) in enumerate(good)}
            for i, img, err in batch:
                name = describe(items[i])
                if err is not None:
                    yield Result(error_record(name, err))
                    continue
                r = row[i]
                assert probs is not None and img is not None  # decoded, so scored
                expl = None
                if idx is not None:
                    expl = self.explanation(img, name, probs[r], idx[r], [m[r] for m in maps], thresholds, i)
                yield Result(self.record(name, probs[r], thresholds, top_k), probs[r], expl)

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
    ) -> list[dict]:
        """Records for paths, folders, PIL images or arrays (one input or a list); see the module docstring."""
        return [result.record for result in self.iter_results(images, threshold, top_k)]

    def probabilities(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """N x C label probabilities in `labels` order; an unreadable image is an error here."""
        rows = []
        for result in self.iter_results(images):
            if result.probabilities is None:
                raise MSRNError(result.record["error"])
            rows.append(result.probabilities)
        return np.stack(rows) if rows else np.zeros((0, len(self.labels)), np.float32)
