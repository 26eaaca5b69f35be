"""Helpers shared by the tests that need a small dataset on disk: CSV datasets of tiny PNG images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("blue", "green", "red")  # make_csv's labels, each a colour filling its own region
REGIONS = {
    "red": (slice(0, 16), slice(0, 32)),
    "green": (slice(16, 32), slice(0, 16)),
    "blue": (slice(16, 32), slice(16, 32)),
}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_csv(folder: Path, rows: Iterable[tuple[np.ndarray, Sequence[str], str]]) -> Path:
    """Save each (image, labels, split) as folder/img/<i>.png and list them in folder/data.csv."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["image,labels,split"]
    for i, (pixels, labels, split) in enumerate(rows):
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{'|'.join(labels)},{split}")
    path = folder / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_csv(root: Path, n_train: int = 40, n_test: int = 13, seed: int = 0) -> Path:
    """32 px colour-block images: a label's colour fills its own region when the label is present,
    so a tiny model can learn them in a few epochs. An image may have no label."""
    rng = np.random.default_rng(seed)

    def rows() -> Iterable[tuple[np.ndarray, list[str], str]]:
        for i in range(n_train + n_test):
            present = [lab for lab in LABELS if rng.random() < 0.5]
            pixels = rng.integers(90, 140, (32, 32, 3), dtype=np.uint8)
            for lab in present:
                pixels[REGIONS[lab]] = COLOURS[lab]
            yield pixels, present, "train" if i < n_train else "test"

    return write_csv(root, rows())


def noise_csv(
    folder: Path, splits: dict[str, int], labels: Sequence[str] = "abcd", size: int = 64, p: float = 0.4, seed: int = 0
) -> Path:
    """Random-noise images, `splits[name]` of each split in order; each image has each label with
    probability p, and at least one (for tests where what is learnt does not matter)."""
    rng = np.random.default_rng(seed)

    def rows() -> Iterable[tuple[np.ndarray, list[str], str]]:
        i = 0
        for split, n in splits.items():
            for _ in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                yield pixels, [lab for lab in labels if rng.random() < p] or [labels[i % len(labels)]], split
                i += 1

    return write_csv(folder, rows())


def tiny_train_args(
    data: Path, out: Path, *extra: str, batch_size: int | None = None, epochs: int | None = None
) -> list[str]:
    """`msrn train` arguments for a seconds-long CPU run: msrn_tiny from scratch on a CSV dataset at 64 px,
    no loader workers; batch size and epochs only when given (else train's defaults). EXTRA comes last, so
    a flag repeated there overrides the one here (argparse keeps the last)."""
    args = ["train", "--dataset", "csv", "--data", str(data), "--out", str(out), "--model", "msrn_tiny"]
    args += ["--pretrained", "none", "--image-size", "64", "--workers", "0"]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    return [*args, *extra]
