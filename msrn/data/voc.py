"""PASCAL VOC 2007: per-class ImageSets files when present, else the split list plus Annotations XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from msrn.data.base import MultiLabelData, read_text, require_dir, require_file
from msrn.errors import MSRNError

VOC_LABELS = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
VOC_SPLITS = ("trainval", "train", "val", "test")
# per-class file value -> target: 1 present, 0 difficult (-> -1), -1 absent (-> 0)
_CLASS_FILE_VALUES = {"1": 1, "0": -1, "-1": 0}


def find_voc_root(data: Path) -> Path:
    """Locate the VOC2007 folder given it, VOCdevkit, or the folder holding VOCdevkit."""
    for candidate in (data, data / "VOC2007", data / "VOCdevkit" / "VOC2007"):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise MSRNError(
        f"{data}: no VOC 2007 tree found (expected ImageSets/Main in it, in VOC2007/ or in VOCdevkit/VOC2007/)"
    )


def _read_class_files(main: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Read ImageSets/Main/<class>_<split>.txt for every class into ids and a target matrix."""
    ids: list[str] = []
    columns: list[dict[str, int]] = []
    for label in VOC_LABELS:
        path = main / f"{label}_{split}.txt"
        column: dict[str, int] = {}
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in _CLASS_FILE_VALUES:
                raise MSRNError(f"{path}:{lineno}: expected '<image id> <1|0|-1>', found {line.strip()!r}")
            if not columns:
                ids.append(parts[0])
            elif parts[0] not in columns[0]:
                raise MSRNError(f"{path}:{lineno}: image {parts[0]} is not in {VOC_LABELS[0]}_{split}.txt")
            column[parts[0]] = _CLASS_FILE_VALUES[parts[1]]
        if columns and len(column) != len(columns[0]):
            first = f"{VOC_LABELS[0]}_{split}.txt"
            raise MSRNError(f"{path}: lists {len(column)} images, {first} lists {len(ids)}")
        columns.append(column)
    targets = np.array([[column[i] for column in columns] for i in ids], dtype=np.int8)
    return ids, targets.reshape(len(ids), len(VOC_LABELS))


def _read_split_file(path: Path) -> list[str]:
    """Read ImageSets/Main/<split>.txt: one image id a line."""
    ids = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1:
            raise MSRNError(f"{path}:{lineno}: expected one image id, found {line.strip()!r}")
        ids.append(parts[0])
    return ids


def parse_annotation(path: Path) -> np.ndarray:
    """Targets of one Annotations/<id>.xml: 1 if a non-difficult object, -1 if only difficult ones."""
    require_file(path, "a VOC annotation XML")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise MSRNError(f"{path}:{e.position[0]}: malformed XML ({e})") from None
    target = np.zeros(len(VOC_LABELS), dtype=np.int8)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_LABELS:
            raise MSRNError(f"{path}: object name {name!r} is not one of the 20 VOC labels")
        difficult_text = (obj.findtext("difficult") or "0").strip()
        if difficult_text not in ("0", "1"):
            raise MSRNError(f"{path}: <difficult> must be 0 or 1, found {difficult_text!r}")
        c = VOC_LABELS.index(name)
        if difficult_text == "0":
            target[c] = 1
        elif target[c] == 0:
            target[c] = -1
    return target


def read_voc2007(data: Path, split: str) -> MultiLabelData:
    """Read one VOC 2007 split (trainval, train, val, test) into MultiLabelData."""
    if split not in VOC_SPLITS:
        raise MSRNError(f"voc2007 has no split '{split}' (choose from {', '.join(VOC_SPLITS)})")
    root = find_voc_root(Path(data))
    main = root / "ImageSets" / "Main"
    if all((main / f"{label}_{split}.txt").is_file() for label in VOC_LABELS):
        ids, targets = _read_class_files(main, split)
    else:
        split_file = main / f"{split}.txt"
        if not split_file.is_file():
            raise MSRNError(
                f"{main}: neither the 20 files <class>_{split}.txt nor {split}.txt found for split '{split}'"
            )
        ids = _read_split_file(split_file)
        require_dir(root / "Annotations", "the VOC annotation XML files")
        targets = np.zeros((len(ids), len(VOC_LABELS)), dtype=np.int8)
        for r, image_id in enumerate(ids):
            targets[r] = parse_annotation(root / "Annotations" / f"{image_id}.xml")
    images_dir = require_dir(root / "JPEGImages", "the VOC images <id>.jpg").resolve()
    images = [images_dir / f"{image_id}.jpg" for image_id in ids]
    return MultiLabelData("voc2007", split, root.resolve(), images, list(VOC_LABELS), targets)
