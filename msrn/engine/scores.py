"""`msrn evaluate --scores FILE`: every image's label probabilities as CSV, for users' own metrics and ensembles.

One header row (`image`, then the label names in label order), then one row per image: its path
(relative to the dataset root when it lies inside it, as the CSV format writes paths) and one
probability per label, with 9 significant digits (float32's full precision).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from msrn.data import MultiLabelData
from msrn.io import atomic_write_text
from msrn.metrics import sigmoid


def _shown_path(image: Path, root: Path) -> str:
    """The image's path relative to the dataset root where possible, else absolute, with / separators."""
    try:
        return image.relative_to(root).as_posix()
    except ValueError:
        return image.as_posix()


def scores_csv(data: MultiLabelData, probabilities: np.ndarray) -> str:
    """The CSV text of N x C probabilities for the images of `data`, in its image and label order."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(data), len(data.labels)):
        raise ValueError(f"{probabilities.shape} probabilities for {len(data)} images x {len(data.labels)} labels")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", *data.labels])
    for image, row in zip(data.images, probabilities, strict=True):
        writer.writerow([_shown_path(Path(image), Path(data.root)), *(f"{p:.9g}" for p in row)])
    return buffer.getvalue()


def write_scores(path: str | Path, data: MultiLabelData, logits: np.ndarray) -> None:
    """Write the probabilities of `logits` (N x C) as the scores CSV, atomically."""
    atomic_write_text(path, scores_csv(data, sigmoid(np.asarray(logits, dtype=np.float64))))
