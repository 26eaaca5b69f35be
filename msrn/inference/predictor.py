"""The `Predictor` (what `msrn.load` returns): a loaded model that tags images, batch by batch.

A record per image is `{"image": path, "labels": [{"label": name, "score": probability}, ...]}`
with labels in descending score; an image that cannot be read gets `{"image", "error", "labels": []}`
instead, and the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from msrn.data.transforms import TestTransform
from msrn.errors import MSRNError, setting_up
from msrn.images import DEFAULT_MAX_PIXELS
from msrn.inference.args import read_label_names
from msrn.inference.explain import (
    Explanation,
    explained_by,
    explained_depths,
    explained_forward,
    require_explainable,
)
from msrn.inference.tagging import ImageInput, Tagger, threshold_vector
from msrn.models import Loaded, Network, load_checkpoint, optimize_for_inference, with_tta
from msrn.options import UNRECORDED_IMAGE_SIZE


class Predictor(Tagger):
    """A loaded model ready to tag images: `predict` for records, `probabilities`, `explain` for maps.

    Without image_size, threshold or exif_orientation: the reference's input size, 0.5 for every label,
    EXIF upright (`from_checkpoint` passes the checkpoint's own instead).
    """

    def __init__(
        self,
        model: Network,
        image_size: int | None = None,
        threshold: float | Sequence[float] | None = None,
        top_k: int | None = None,
        batch_size: int = 8,
        device: str | torch.device = "cpu",
        fast: bool = True,
        tta: str = "none",
        exif_orientation: bool | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._infer: nn.Module = self.model  # what plain (unexplained) batches run through
        if fast:  # batch norm folded, channels-last: the same logits to float32 rounding (msrn.models._fuse); faster
            folded = optimize_for_inference(self.model)
            self._infer, self.model = folded, folded.model  # the folded network itself, still an MSRN, for explanations
        self._infer, self.tta = with_tta(self._infer, tta), tta  # "flip": scores average the image and its mirror
        self.image_size = int(image_size or UNRECORDED_IMAGE_SIZE)
        self.transform = TestTransform(self.image_size)
        self.labels: list[str] = list(model.labels)
        self.thresholds = threshold_vector(0.5 if threshold is None else threshold, len(self.labels))
        self.top_k = top_k
        self.batch_size = max(1, int(batch_size))
        self.exif_orientation = True if exif_orientation is None else bool(exif_orientation)
        self.max_pixels = max_pixels  # None: Pillow's own decompression-bomb limit only

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        word_vectors: Any = None,
        cooccurrence: Any = None,
        labels: Sequence[str] | None = None,
        **options: Any,
    ) -> Predictor:
        """`msrn.load("best.pt")`: a Predictor for a project or reference checkpoint (the latter with its word
        vectors and co-occurrence, by default the reference's own files for the dataset with its number of labels).

        labels name a reference checkpoint's outputs (it stores none; by default that dataset's names); a project
        checkpoint's own names must match them. options: image_size, threshold, top_k, batch_size, device, fast,
        tta ("none" or "flip"), exif_orientation, max_pixels (see `Predictor`); image_size, threshold and
        exif_orientation not given (or None) are the checkpoint's: training's input size, tuned thresholds and
        decoding.
        """
        labels = list(labels) if labels is not None else None
        loaded = load_checkpoint(path, word_vectors=word_vectors, cooccurrence=cooccurrence, labels=labels)
        return cls.from_loaded(loaded, **options)

    @classmethod
    def from_loaded(cls, loaded: Loaded, **options: Any) -> Predictor:
        """A Predictor for a loaded checkpoint; image_size, threshold and exif_orientation not given (or None)
        are the checkpoint's."""
        stored = {
            "image_size": loaded.image_size,
            "threshold": loaded.thresholds,
            "exif_orientation": loaded.exif_orientation,
        }
        return cls(loaded.model, **{**options, **{k: v for k, v in stored.items() if options.get(k) is None}})

    def scores(self, images: list[Image.Image], explain_k: int) -> tuple[np.ndarray, np.ndarray | None, list]:
        """`run` on decoded images."""
        return self.run(torch.stack([self.transform(img) for img in images]), explain_k)

    def check_explainable(self) -> None:
        """Explanations need a model with per-label spatial attention and one forward pass of the image as given."""
        require_explainable(self.model)
        if self.tta != "none":
            raise MSRNError(f"explanations show one forward pass of the image as given; not with tta={self.tta!r}")

    @torch.no_grad()
    def run(self, x: torch.Tensor, explain_k: int = 0) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
        """Probabilities (B x C) of a batch of transformed images (B x 3 x S x S), and with explain_k > 0
        the top label ids (B x k) and attention maps (one array B x k x H_s x W_s per depth read)."""
        x = x.to(self.device)
        if explain_k <= 0:
            return torch.sigmoid(self._infer(x)).float().cpu().numpy(), None, []
        logits, idx, maps = explained_forward(require_explainable(self.model), x, explain_k)
        return (
            torch.sigmoid(logits).float().cpu().numpy(),
            idx.cpu().numpy(),
            [m.float().cpu().numpy() for m in maps],
        )

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
        """Bundle one image's top labels, scores and maps (from `run`) for drawing."""
        thresholds = self.thresholds if thresholds is None else thresholds
        return Explanation(
            image=img,
            name=Path(name).name if name else f"image {index}",
            labels=[self.labels[j] for j in ids],
            scores=[float(probs[j]) for j in ids],
            maps=maps,
            thresholds=[float(thresholds[j]) for j in ids],
            depths=explained_depths(self.model),
            model=explained_by(self.model),
        )

    def explain(self, images: ImageInput | Iterable[ImageInput], k: int = 3) -> list[Any]:
        """An `msrn.inference.explain.Explanation` (top-k labels and their maps) per image; unreadable is an error."""
        out = []
        for result in self.iter_results(images, explain_k=max(1, k)):
            if result.explanation is None:
                raise MSRNError(result.record["error"])
            out.append(result.explanation)
        return out


# msrn.load: the same function, so that loading is one call from the API to the checkpoint reader
load = Predictor.from_checkpoint


def loaded_from_args(args: Any) -> Loaded:
    """The checkpoint that the shared checkpoint options (msrn.options) name, loaded."""
    labels = read_label_names(args.labels) if args.labels else None
    return load_checkpoint(args.checkpoint, args.word_vectors, args.cooccurrence, labels)


def load_from_args(args: Any, **options: Any) -> Predictor:
    """The Predictor that the shared checkpoint options describe (predict, serve)."""
    with setting_up():  # a value torch refuses while the model is built and moved: one line, no traceback
        return Predictor.from_loaded(loaded_from_args(args), image_size=args.image_size, **options)
