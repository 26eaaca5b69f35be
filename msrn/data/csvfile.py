"""The generic CSV format: `image,labels,split` rows, labels separated by `|`, paths relative to the CSV."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from msrn.data.base import MultiLabelData, require_file
from msrn.errors import MSRNError

COLUMNS = ("image", "labels", "split")


def read_rows(path: Path) -> list[tuple[str, list[str], str]]:
    """Parse the CSV into (image, labels, split) rows, raising MSRNError with file:line on a bad row."""
    require_file(path, "a CSV with header image,labels,split")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip().lower() for h in header) != COLUMNS:
                raise MSRNError(f"{path}:1: expected the header 'image,labels,split', found {header}")
            rows = []
            for record in reader:
                line = reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if len(record) != 3:
                    found = len(record)
                    raise MSRNError(f"{path}:{line}: expected 3 columns (image,labels,split), found {found}")
                image, labels, split = (field.strip() for field in record)
                if not image:
                    raise MSRNError(f"{path}:{line}: empty image path")
                if not split:
                    raise MSRNError(f"{path}:{line}: empty split")
                names = [name.strip() for name in labels.split("|") if name.strip()]
                rows.append((image, names, split))
    except csv.Error as e:
        raise MSRNError(f"{path}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise MSRNError(f"{path}: not UTF-8 text ({e})") from None
    return rows


def read_csv_dataset(path: Path, split: str, name: str = "csv") -> MultiLabelData:
    """Read one split of a CSV dataset; labels are the sorted names over all splits of the file."""
    path = Path(path)
    rows = read_rows(path)
    labels = sorted({label for _, names, _ in rows for label in names})
    splits = sorted({s for _, _, s in rows})
    chosen = [row for row in rows if row[2] == split]
    if not chosen:
        raise MSRNError(f"{path}: no rows with split '{split}' (splits found: {', '.join(splits) or 'none'})")
    index = {label: k for k, label in enumerate(labels)}
    targets = np.zeros((len(chosen), len(labels)), dtype=np.int8)
    for r, (_, names, _) in enumerate(chosen):
        targets[r, [index[n] for n in names]] = 1
    folder = path.resolve().parent
    images = [folder / image for image, _, _ in chosen]
    # a user's own photos: shown upright, as a viewer shows them (the benchmark readers follow the reference)
    return MultiLabelData(name, split, folder, images, labels, targets, exif_orientation=True)
