"""The generic CSV format: `image,labels,split[,unknown]` rows, labels separated by `|`, paths relative to the CSV.

The optional `unknown` column names the labels whose presence is not known for that image (partial
annotations); they get the target UNKNOWN (msrn.targets) instead of absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from msrn.data.base import MultiLabelData, require_file
from msrn.errors import MSRNError
from msrn.targets import POSITIVE, UNKNOWN

COLUMNS = ("image", "labels", "split")
PARTIAL_COLUMNS = (*COLUMNS, "unknown")


def _names(field: str) -> list[str]:
    """The `|`-separated label names of a field, blanks dropped."""
    return [name.strip() for name in field.split("|") if name.strip()]


def read_rows(path: Path) -> list[tuple[str, list[str], str, list[str]]]:
    """Parse the CSV into (image, labels, split, unknown labels) rows, raising MSRNError with file:line on a bad row."""
    require_file(path, "a CSV with header image,labels,split (and optionally unknown)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = None if header is None else tuple(h.strip().lower() for h in header)
            if columns not in (COLUMNS, PARTIAL_COLUMNS):
                raise MSRNError(
                    f"{path}:1: expected the header 'image,labels,split' or 'image,labels,split,unknown', "
                    f"found {header}"
                )
            width = len(columns)
            rows = []
            for record in reader:
                line = reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if len(record) != width:
                    found = len(record)
                    raise MSRNError(f"{path}:{line}: expected {width} columns ({','.join(columns)}), found {found}")
                image, labels, split, *rest = (field.strip() for field in record)
                if not image:
                    raise MSRNError(f"{path}:{line}: empty image path")
                if not split:
                    raise MSRNError(f"{path}:{line}: empty split")
                names, unknown = _names(labels), _names(rest[0]) if rest else []
                both = sorted(set(names) & set(unknown))
                if both:
                    raise MSRNError(f"{path}:{line}: label {both[0]!r} is both present and unknown")
                rows.append((image, names, split, unknown))
    except csv.Error as e:
        raise MSRNError(f"{path}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise MSRNError(f"{path}: not UTF-8 text ({e})") from None
    return rows


def read_csv_dataset(path: Path, split: str, name: str = "csv") -> MultiLabelData:
    """Read one split of a CSV dataset; labels are the sorted names over all splits and both label columns."""
    path = Path(path)
    rows = read_rows(path)
    labels = sorted({label for _, names, _, unknown in rows for label in (*names, *unknown)})
    splits = sorted({row[2] for row in rows})
    chosen = [row for row in rows if row[2] == split]
    if not chosen:
        raise MSRNError(f"{path}: no rows with split '{split}' (splits found: {', '.join(splits) or 'none'})")
    index = {label: k for k, label in enumerate(labels)}
    targets = np.zeros((len(chosen), len(labels)), dtype=np.int8)
    for r, (_, names, _, unknown) in enumerate(chosen):
        targets[r, [index[n] for n in names]] = POSITIVE
        targets[r, [index[n] for n in unknown]] = UNKNOWN
    folder = path.resolve().parent
    images = [folder / row[0] for row in chosen]
    # a user's own photos: shown upright, as a viewer shows them (the benchmark readers follow the reference)
    return MultiLabelData(name, split, folder, images, labels, targets, exif_orientation=True)
