"""NUS-WIDE as distributed with ASL: one nus_wid_data.csv (filepath,label,split_name), 81 labels."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np

from msrn.data.base import MultiLabelData, require_file
from msrn.errors import MSRNError

# The 81 labels in the order of the reference's word vectors, label graph and checkpoint.
NUSWIDE_LABELS = (
    "clouds", "sky", "person", "street", "window", "tattoo", "wedding", "animal", "cat", "buildings",
    "tree", "airport", "plane", "water", "grass", "cars", "road", "snow", "sunset", "railroad", "train",
    "flowers", "plants", "house", "military", "horses", "nighttime", "lake", "rocks", "waterfall", "sun",
    "vehicle", "sports", "reflection", "temple", "statue", "ocean", "town", "beach", "tower", "toy",
    "book", "bridge", "fire", "mountain", "rainbow", "garden", "police", "coral", "fox", "sign", "dog",
    "cityscape", "sand", "dancing", "leaf", "tiger", "moon", "birds", "food", "cow", "valley", "fish",
    "harbor", "bear", "castle", "boats", "running", "glacier", "swimmers", "elk", "frost", "protest",
    "soccer", "flags", "zebra", "surf", "whales", "computer", "earthquake", "map",
)  # fmt: skip
NUSWIDE_SPLITS = ("train", "val")
CSV_NAME = "nus_wid_data.csv"


def parse_label_list(text: str, where: str) -> list[str]:
    """Parse a Python-list literal of strings such as "['clouds', 'sky']" (or "[]") safely."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise MSRNError(f"{where}: label field {text!r} is not a Python list literal") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MSRNError(f"{where}: label field {text!r} should be a list of strings")
    return value


def _image_base(data: Path, filepaths: list[str]) -> Path:
    """Pick data/ or data/images/ as the folder the CSV's file paths are relative to."""
    sample = filepaths[:20]
    for base in (data, data / "images"):
        if any((base / p).is_file() for p in sample):
            return base
    raise MSRNError(
        f"{data}: images of {CSV_NAME} not found (tried {data / sample[0]} and {data / 'images' / sample[0]})"
    )


def read_nuswide(data: Path, split: str) -> MultiLabelData:
    """Read one NUS-WIDE split (train or val) from data/nus_wid_data.csv."""
    if split not in NUSWIDE_SPLITS:
        raise MSRNError(f"nuswide has no split '{split}' (choose from {', '.join(NUSWIDE_SPLITS)})")
    data = Path(data)
    path = require_file(data / CSV_NAME, "the ASL NUS-WIDE CSV with columns filepath,label,split_name")
    try:
        rows, filepaths = _read_rows(path, split)
    except csv.Error as e:
        raise MSRNError(f"{path}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise MSRNError(f"{path}: not UTF-8 text ({e})") from None
    if not filepaths:
        raise MSRNError(f"{path}: no rows with split_name '{split}'")
    base = _image_base(data, filepaths).resolve()
    targets = np.zeros((len(rows), len(NUSWIDE_LABELS)), dtype=np.int8)
    for r, cols in enumerate(rows):
        targets[r, cols] = 1
    images = [base / p for p in filepaths]
    return MultiLabelData("nuswide", split, data.resolve(), images, list(NUSWIDE_LABELS), targets)


def _read_rows(path: Path, split: str) -> tuple[list[list[int]], list[str]]:
    """Label columns and file paths of the rows of `split`, validating every row of the CSV."""
    column = {label: k for k, label in enumerate(NUSWIDE_LABELS)}
    filepaths: list[str] = []
    rows: list[list[int]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not {"filepath", "label", "split_name"} <= set(header):
            raise MSRNError(f"{path}:1: expected the header 'filepath,label,split_name', found {header}")
        # by name, so a leading index column (as pandas writes it) is fine
        at = [header.index(name) for name in ("filepath", "label", "split_name")]
        for record in reader:
            line = reader.line_num
            if not record:
                continue
            if len(record) != len(header):
                raise MSRNError(f"{path}:{line}: expected {len(header)} columns, found {len(record)}")
            filepath, label_text, split_name = record[at[0]].strip(), record[at[1]], record[at[2]].strip()
            if split_name not in NUSWIDE_SPLITS:
                raise MSRNError(f"{path}:{line}: split_name {split_name!r} is not train or val")
            if not filepath:
                raise MSRNError(f"{path}:{line}: empty filepath")
            names = parse_label_list(label_text, f"{path}:{line}")
            unknown = [n for n in names if n not in column]
            if unknown:
                raise MSRNError(f"{path}:{line}: label {unknown[0]!r} is not one of the 81 NUS-WIDE labels")
            if split_name == split:
                filepaths.append(filepath)
                rows.append([column[n] for n in names])
    return rows, filepaths
