"""Kaggle apparel images: one folder per colour_garment pair, split 50/50 by a seeded permutation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from msrn.data.base import MultiLabelData, require_dir
from msrn.errors import MSRNError

COLOURS = ("black", "blue", "brown", "green", "red", "white")
GARMENTS = ("dress", "pants", "shirt", "shoes", "shorts")
APPAREL_LABELS = COLOURS + GARMENTS
APPAREL_SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _parse_folder(name: str) -> tuple[str, str] | None:
    """(colour, garment) when the folder name is colour_garment with known words, else None."""
    parts = name.lower().split("_")
    if len(parts) == 2 and parts[0] in COLOURS and parts[1] in GARMENTS:
        return parts[0], parts[1]
    return None


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_class_folders(data: Path) -> list[tuple[Path, str, str]]:
    """The colour_garment folders under data (or under its single subfolder), with their two labels."""
    folder = require_dir(data, "the apparel folders such as black_dress/")
    subs = _subfolders(folder)
    while len(subs) == 1 and _parse_folder(subs[0].name) is None:
        folder = subs[0]
        subs = _subfolders(folder)
    if not subs:
        raise MSRNError(f"{folder}: no colour_garment folders (such as black_dress/) found")
    found = []
    for sub in subs:
        pair = _parse_folder(sub.name)
        if pair is None:
            raise MSRNError(
                f"{sub}: folder name is not colour_garment with colour in {', '.join(COLOURS)} "
                f"and garment in {', '.join(GARMENTS)}"
            )
        found.append((sub, *pair))
    return found


def read_apparel(data: Path, split: str, seed: int = 0) -> MultiLabelData:
    """Read the train or test half of the apparel images (halves fixed by `seed`)."""
    if split not in APPAREL_SPLITS:
        raise MSRNError(f"apparel has no split '{split}' (choose from {', '.join(APPAREL_SPLITS)})")
    data = Path(data)
    entries: list[tuple[str, Path, str, str]] = []
    for folder, colour, garment in find_class_folders(data):
        for f in folder.iterdir():
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((f"{folder.name}/{f.name}", f.resolve(), colour, garment))
    if not entries:
        raise MSRNError(f"{data}: no images found in the colour_garment folders")
    entries.sort()
    order = np.random.RandomState(seed).permutation(len(entries))
    n_train = (len(entries) + 1) // 2
    chosen = np.sort(order[:n_train] if split == "train" else order[n_train:])
    targets = np.zeros((len(chosen), len(APPAREL_LABELS)), dtype=np.int8)
    images = []
    for r, k in enumerate(chosen):
        _, path, colour, garment = entries[k]
        images.append(path)
        targets[r, APPAREL_LABELS.index(colour)] = 1
        targets[r, APPAREL_LABELS.index(garment)] = 1
    return MultiLabelData("apparel", split, data.resolve(), images, list(APPAREL_LABELS), targets)
