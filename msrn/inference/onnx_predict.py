"""Tag images from an ONNX file written by `msrn export`, with numpy, Pillow and onnxruntime only.

Everything besides the graph comes from the file's metadata: label names, per-label thresholds,
input size, normalisation and whether photos are turned upright by their EXIF orientation. This
module imports no torch, so a deployment needs neither torch nor a checkpoint:

    from msrn.inference.onnx_predict import load_onnx
    records = load_onnx("model.onnx").predict(["a.jpg", "photos/"])

Decoding, resizing and records are those of `msrn predict`; the scores match the PyTorch path's
to about 1e-5 (the export itself is verified to 1e-4 in the logits).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS, normalized_array
from msrn.inference.tagging import (
    ImageInput,
    Result,
    as_list,
    decoded_batches,
    describe,
    error_record,
    expand_inputs,
    make_record,
    read_input,
    threshold_vector,
)

REQUIRED = ("labels", "image_size", "mean", "std")


def _metadata(session: Any, where: str) -> dict[str, str]:
    """The model's metadata_props, checked for what tagging needs."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise MSRNError(f"{where} lacks the metadata {', '.join(missing)}; export it with `msrn export`")
    return meta


class OnnxPredictor:
    """An exported model ready to tag images: `predict` for records, `probabilities` for scores."""

    def __init__(
        self,
        path: str | os.PathLike,
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
        batch_size: int = 8,
        exif_orientation: bool | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        try:
            import onnxruntime  # optional: the `export` extra
        except ImportError:
            raise MSRNError("tagging with an ONNX file needs onnxruntime: pip install onnxruntime") from None
        where = os.fspath(path)
        if not os.path.isfile(where):
            raise MSRNError(f"ONNX file {where} does not exist")
        try:
            self.session = onnxruntime.InferenceSession(where, providers=list(providers))
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types for unreadable files)
            raise MSRNError(f"{where} is not a readable ONNX model: {str(e).strip().splitlines()[0]}") from None
        meta = _metadata(self.session, where)
        try:
            self.labels: list[str] = list(json.loads(meta["labels"]))
            self.image_size = int(meta["image_size"])
            self.mean = np.asarray(json.loads(meta["mean"]), np.float32)
            self.std = np.asarray(json.loads(meta["std"]), np.float32)
            stored = json.loads(meta.get("thresholds", "0.5"))
            stored_exif = json.loads(meta.get("exif_orientation", "true"))
        except (ValueError, TypeError) as e:
            raise MSRNError(f"{where} has malformed metadata ({e})") from None
        self.thresholds = threshold_vector(stored if threshold is None else threshold, len(self.labels))
        self.top_k = top_k
        self.batch_size = max(1, int(batch_size))
        self.exif_orientation = bool(stored_exif if exif_orientation is None else exif_orientation)
        self.max_pixels = max_pixels

    def decode(self, item: ImageInput) -> Image.Image:
        """One input as the RGB image the model sees, or an MSRNError."""
        return read_input(item, self.exif_orientation, self.max_pixels)

    def run(self, images: list[Image.Image]) -> np.ndarray:
        """Probabilities (B x C) of decoded images."""
        x = np.stack([normalized_array(img, self.image_size, self.mean, self.std) for img in images])
        (logits,) = self.session.run(["logits"], {"image": x})
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def iter_results(
        self, images: ImageInput | Iterable[ImageInput], threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
    ) -> Iterator[Result]:
        """A Result per image, in input order, computed batch by batch."""
        items = expand_inputs(as_list(images))
        thresholds = self.thresholds if threshold is None else threshold_vector(threshold, len(self.labels))
        top_k = self.top_k if top_k is None else top_k
        for batch in decoded_batches(items, self.decode, self.batch_size):
            good = [img for _, img, _ in batch if img is not None]
            probs = iter(self.run(good) if good else [])
            for i, _, err in batch:
                name = describe(items[i])
                if err is not None:
                    yield Result(error_record(name, err))
                    continue
                row = next(probs)
                yield Result(make_record(self.labels, name, row, thresholds, top_k), row)

    def predict(
        self, images: ImageInput | Iterable[ImageInput], threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
    ) -> list[dict]:
        """Records for paths, folders, PIL images or arrays, as `msrn.inference.predictor.Predictor.predict` gives."""
        return [result.record for result in self.iter_results(images, threshold, top_k)]

    def probabilities(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """N x C label probabilities in `labels` order; an unreadable image is an error here."""
        rows = []
        for result in self.iter_results(images):
            if result.probabilities is None:
                raise MSRNError(result.record["error"])
            rows.append(result.probabilities)
        return np.stack(rows) if rows else np.zeros((0, len(self.labels)))


def load_onnx(path: str | os.PathLike, **options: Any) -> OnnxPredictor:
    """An OnnxPredictor for a file from `msrn export` (options: threshold, top_k, batch_size,
    exif_orientation, max_pixels, providers)."""
    return OnnxPredictor(path, **options)
