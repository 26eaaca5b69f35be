"""`msrn inspect`: show what a dataset reader sees (image count, labels, positives per label, the
difficult (VOC) and unknown (CSV partial labels) entries per label where there are any, and with
--images every image), so splits can be compared with another tool's file by file."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from msrn.data import DatasetOptions, MultiLabelData
from msrn.errors import MSRNError
from msrn.options import add_options, option
from msrn.targets import UNKNOWN


@dataclass(frozen=True, kw_only=True)
class InspectOptions(DatasetOptions):
    """Options of `msrn inspect`."""

    split: str | None = option(None, "split to read (default: the dataset's train split)")
    json: bool = option(False, "print one JSON object instead of a table")
    images: bool = option(False, "with --json: also list every image (path relative to the data root, label names)")

    def check(self) -> None:
        if self.images and not self.json:
            raise MSRNError("--images lists every image in the JSON summary: add --json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn inspect`."""
    add_options(parser, InspectOptions)


def relative_path(path: Path, root: Path) -> str:
    """`path` relative to `root` with forward slashes, or the whole path when it lies outside `root`."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def image_entries(data: MultiLabelData) -> list[dict]:
    """One entry per image in the split's order: its path relative to the data root and its positive labels
    (and, where a label is only difficult, VOC's difficult ones)."""
    entries = []
    for path, row in zip(data.images, data.targets, strict=True):
        entry: dict = {
            "path": relative_path(path, data.root),
            "labels": [label for label, t in zip(data.labels, row, strict=True) if t == 1],
        }
        difficult = [label for label, t in zip(data.labels, row, strict=True) if t == -1]
        if difficult:
            entry["difficult"] = difficult
        entries.append(entry)
    return entries


def main(args: argparse.Namespace | InspectOptions) -> int:
    """Read the split and print its summary as a table or as one JSON object."""
    args = InspectOptions.from_args(args)
    split = args.split_name(0)
    data = args.read(split)
    counts = data.label_counts()
    difficult = data.difficult_counts() if args.dataset == "voc2007" else None
    unknown = data.unknown_counts() if (data.targets == UNKNOWN).any() else None  # partial labels (CSV)
    if args.json:
        summary = {
            "dataset": data.name,
            "split": data.split,
            "root": str(data.root),
            "num_images": len(data),
            "labels": list(data.labels),
            "label_counts": counts,
        }
        if difficult is not None:
            summary["difficult_counts"] = difficult
        if unknown is not None:
            summary["unknown_counts"] = unknown
        if data.note:
            summary["note"] = data.note
        if args.images:
            summary["images"] = image_entries(data)
        print(json.dumps(summary))
        return 0
    print(f"{data.name} split {data.split}: {len(data)} images, {len(data.labels)} labels ({data.root})")
    if data.note:
        print(f"({data.note})")
    width = max([len("label"), *(len(label) for label in data.labels)])
    header = f"{'label':<{width}}  {'images':>7}  {'share':>6}"
    header += f"  {'difficult':>9}" if difficult is not None else ""
    print(header + (f"  {'unknown':>7}" if unknown is not None else ""))
    for label in data.labels:
        share = counts[label] / len(data) if len(data) else 0.0
        row = f"{label:<{width}}  {counts[label]:>7}  {share:>6.1%}"
        row += f"  {difficult[label]:>9}" if difficult is not None else ""
        print(row + (f"  {unknown[label]:>7}" if unknown is not None else ""))
    return 0
