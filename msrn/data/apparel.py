"""Kaggle apparel images. With the reference's image_label.pkl its split and labels exactly (Python's
random.seed(10), shuffle, first half train), images in the Kaggle tree (a folder per colour_garment) or
in one flat folder; without it, labels from the folder names and a seeded 50/50 split of our own."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from msrn.data.base import MultiLabelData, require_dir, require_file
from msrn.errors import MSRNError
from msrn.images import IMAGE_SUFFIXES
from msrn.safe_pickle import load_numpy_pickle

COLOURS = ("black", "blue", "brown", "green", "red", "white")
GARMENTS = ("dress", "pants", "shirt", "shoes", "shorts")
APPAREL_LABELS = COLOURS + GARMENTS
APPAREL_SPLITS = ("train", "test")
LABEL_FILE = "image_label.pkl"  # the reference's file name -> 11 labels (0 present, -1 absent)
REFERENCE_SEED = 10  # the reference's split_dataset seeds Python's random with 10


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


def find_label_file(data: Path) -> Path | None:
    """The reference's image_label.pkl in `data` or `data/apparel/` (where the reference keeps it), if any."""
    for candidate in (data / LABEL_FILE, data / "apparel" / LABEL_FILE):
        if candidate.is_file():
            return candidate
    return None


def read_image_labels(path: Path) -> list[tuple[str, np.ndarray]]:
    """The items of image_label.pkl in stored order (the split depends on it), each row as 1 present / 0 absent."""
    table = load_numpy_pickle(require_file(path, f"the reference's {LABEL_FILE}"))
    if not isinstance(table, dict) or not table:
        raise MSRNError(f"{path}: expected a non-empty dict of image file name -> {len(APPAREL_LABELS)} labels")
    items = []
    for name, row in table.items():
        values = list(row) if isinstance(row, list | tuple | np.ndarray) else None
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or Path(name).name != name
            or values is None
            or len(values) != len(APPAREL_LABELS)
            or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v not in (0, -1) for v in values)
        ):
            raise MSRNError(
                f"{path}: entry {name!r} should map a plain file name to {len(APPAREL_LABELS)} values, "
                f"0 (present) or -1 (absent), found {row!r}"
            )
        items.append((name, (np.asarray(values) == 0).astype(np.int8)))
    return items


def reference_split(items: list, split: str) -> list:
    """The reference's split_dataset: shuffle with Python's random seeded 10, first int(n * 0.5) are train.

    A private random.Random(10) draws the same sequence as random.seed(10) and leaves the global state alone.
    """
    shuffled = list(items)
    random.Random(REFERENCE_SEED).shuffle(shuffled)
    cut = int(len(shuffled) * 0.5)
    return shuffled[:cut] if split == "train" else shuffled[cut:]


def _kaggle_index(data: Path) -> dict[str, list[tuple[Path, set[str]]]]:
    """File name -> (path, {colour, garment}) for every image in the colour_garment folders; empty if none."""
    try:
        folders = find_class_folders(data)
    except MSRNError:
        return {}
    index: dict[str, list[tuple[Path, set[str]]]] = {}
    for folder, colour, garment in folders:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                index.setdefault(f.name, []).append((f, {colour, garment}))
    return index


def locate_images(data: Path, items: list[tuple[str, np.ndarray]], label_file: Path) -> list[Path]:
    """Each item's image: <data>/apparel/<name>, <data>/<name>, or in the Kaggle tree (the folder that
    matches its labels when a name is in several); a missing one is an MSRNError naming it."""
    found: list[Path | None] = []
    for name, _ in items:
        flat = [p for p in (data / "apparel" / name, data / name) if p.is_file()]
        found.append(flat[0] if flat else None)
    if None in found:
        index = _kaggle_index(data)
        for k, (name, row) in enumerate(items):
            places = index.get(name, [])
            if found[k] is None and places:
                positives = {label for label, v in zip(APPAREL_LABELS, row, strict=True) if v}
                found[k] = next((p for p, pair in places if pair == positives), places[0][0])
    missing = [name for (name, _), path in zip(items, found, strict=True) if path is None]
    if missing:
        raise MSRNError(
            f"{data}: {len(missing)} of the {len(items)} images {label_file.name} lists for this split not found, "
            f"first {missing[0]} (looked in {data / 'apparel'}, {data} and its colour_garment folders)"
        )
    return [p for p in found if p is not None]


def _read_reference(data: Path, split: str, label_file: Path) -> MultiLabelData:
    """The reference's split and labels from its image_label.pkl, images in the reference's order."""
    items = reference_split(read_image_labels(label_file), split)
    images = locate_images(data.resolve(), items, label_file)
    targets = np.stack([row for _, row in items]) if items else np.zeros((0, len(APPAREL_LABELS)), np.int8)
    note = f"the reference's split and labels from {label_file} (Python random.seed(10), shuffle, first half train)"
    return MultiLabelData("apparel", split, data.resolve(), images, list(APPAREL_LABELS), targets, note=note)


def read_apparel(data: Path, split: str, seed: int = 0, apparel_labels: str | Path | None = None) -> MultiLabelData:
    """Read the train or test half of the apparel images.

    With the reference's image_label.pkl (`apparel_labels`, else found in `data` or `data/apparel/`) the
    halves and labels are the reference's and `seed` is not used; otherwise labels come from the folder
    names and the halves are fixed by `seed`.
    """
    if split not in APPAREL_SPLITS:
        raise MSRNError(f"apparel has no split '{split}' (choose from {', '.join(APPAREL_SPLITS)})")
    data = Path(data)
    require_dir(data, "the apparel images")
    label_file = Path(apparel_labels).expanduser() if apparel_labels is not None else find_label_file(data)
    if label_file is not None:
        return _read_reference(data, split, label_file)
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
    note = (
        f"a seeded split of our own (numpy RandomState({seed})), not the reference's: "
        f"no {LABEL_FILE} in {data} or {data / 'apparel'}"
    )
    return MultiLabelData("apparel", split, data.resolve(), images, list(APPAREL_LABELS), targets, note=note)
