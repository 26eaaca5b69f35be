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
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import DEFAULT_MAX_PIXELS, normalized_array
from msrn.inference.tagging import Tagger, threshold_vector

REQUIRED = ("labels", "image_size", "mean", "std")


def _metadata(session: Any, where: str) -> dict[str, str]:
    """The model's metadata_props, checked for what tagging needs."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise MSRNError(f"{where} lacks the metadata {', '.join(missing)}; export it with `msrn export`")
    return meta


class OnnxPredictor(Tagger):
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

    def scores(self, images: list[Image.Image], explain_k: int = 0) -> tuple[np.ndarray, None, list]:
        """Probabilities (B x C) of decoded images (the exported graph gives no attention maps)."""
        x = np.stack([normalized_array(img, self.image_size, self.mean, self.std) for img in images])
        (logits,) = self.session.run(["logits"], {"image": x})
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), None, []


def load_onnx(path: str | os.PathLike, **options: Any) -> OnnxPredictor:
    """An OnnxPredictor for a file from `msrn export` (options: threshold, top_k, batch_size,
    exif_orientation, max_pixels, providers)."""
    return OnnxPredictor(path, **options)
