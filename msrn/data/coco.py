"""MS-COCO 2014 read as the reference reads it: instances_{train,val}2014.json, labels in alphabetical order of
their names, images in the file's order, images without annotations left out (an option keeps them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from msrn.data.base import MultiLabelData, require_dir, require_file
from msrn.errors import MSRNError

COCO_SPLITS = ("train", "val")


def _field(path: Path, record: Any, key: str, kind: type, where: str) -> Any:
    """record[key] checked to be of type `kind`, else an MSRNError naming the file and key."""
    if not isinstance(record, dict) or key not in record:
        raise MSRNError(f"{path}: {where} has no key '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        found = type(value).__name__
        raise MSRNError(f"{path}: {where} key '{key}' should be {kind.__name__}, found {found}")
    return value


def read_coco2014(data: Path, split: str, keep_unannotated: bool = False) -> MultiLabelData:
    """Read COCO 2014 train or val from data/annotations/instances_<split>2014.json and data/<split>2014/.

    Labels are sorted by name, the order of the reference's pickles and checkpoints; `keep_unannotated`
    keeps the images with no annotation (all-zero targets), which the reference leaves out.
    """
    if split not in COCO_SPLITS:
        raise MSRNError(f"coco2014 has no split '{split}' (choose from {', '.join(COCO_SPLITS)})")
    data = Path(data)
    path = require_file(data / "annotations" / f"instances_{split}2014.json", "the COCO 2014 instances json")
    images_dir = require_dir(data / f"{split}2014", f"the COCO {split}2014 images").resolve()
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MSRNError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise MSRNError(f"{path}: JSON nested too deeply to be a COCO annotation file") from None
    if not isinstance(doc, dict):
        raise MSRNError(f"{path}: expected a JSON object at the top level")
    images = _field(path, doc, "images", list, "the top level")
    categories = _field(path, doc, "categories", list, "the top level")
    annotations = _field(path, doc, "annotations", list, "the top level")

    cats = [
        (_field(path, c, "id", int, f"categories[{k}]"), _field(path, c, "name", str, f"categories[{k}]"))
        for k, c in enumerate(categories)
    ]
    names = sorted(name for _, name in cats)
    if len(set(names)) != len(names):
        raise MSRNError(f"{path}: duplicate category names in 'categories'")
    position = {name: k for k, name in enumerate(names)}
    column = {cat_id: position[name] for cat_id, name in cats}
    if len(column) != len(cats):
        raise MSRNError(f"{path}: duplicate category ids in 'categories'")
    row: dict[int, int] = {}
    files: list[Path] = []
    for k, image in enumerate(images):
        image_id = _field(path, image, "id", int, f"images[{k}]")
        if image_id in row:
            raise MSRNError(f"{path}: images[{k}] repeats image id {image_id}")
        files.append(images_dir / _field(path, image, "file_name", str, f"images[{k}]"))
        row[image_id] = k
    targets = np.zeros((len(files), len(names)), dtype=np.int8)
    for k, ann in enumerate(annotations):
        image_id = _field(path, ann, "image_id", int, f"annotations[{k}]")
        cat_id = _field(path, ann, "category_id", int, f"annotations[{k}]")
        if image_id not in row:
            raise MSRNError(f"{path}: annotations[{k}] refers to unknown image_id {image_id}")
        if cat_id not in column:
            raise MSRNError(f"{path}: annotations[{k}] refers to unknown category_id {cat_id}")
        targets[row[image_id], column[cat_id]] = 1
    if keep_unannotated:
        note = "images without annotations kept with all-zero targets (the reference leaves them out)"
    else:
        annotated = np.asarray(targets.any(axis=1), dtype=bool)
        files = [f for f, keep in zip(files, annotated, strict=True) if keep]
        targets = targets[annotated]
        note = "images without annotations left out, as the reference does"
    return MultiLabelData("coco2014", split, data.resolve(), files, names, targets, note=note)
