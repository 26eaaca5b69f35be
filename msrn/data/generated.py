"""The scaffold shared by msrn's generated data sets (synthetic, scenes): where they go, when a
folder may be written, and the images/ + annotations.csv + manifest layout written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from msrn.download import cache_dir
from msrn.errors import MSRNError
from msrn.io import atomic_write_text

MANIFEST = "manifest.json"
GENERATING = ".msrn-generating"  # present while a generation runs; marks the folder as msrn's


def default_root(name: str) -> Path:
    """Where a generated data set goes when no --data is given: msrn's cache, never the current folder."""
    return cache_dir() / "data" / name


def read_manifest(root: Path) -> dict | None:
    """The manifest msrn wrote into root, or None when there is none (or it is not msrn's)."""
    try:
        found = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(found, dict) and {"version", "seed", "num_train", "labels"} <= set(found)
    return found if ours else None


def _check_writable(root: Path, what: str) -> None:
    """Refuse a folder that holds anything msrn did not generate: its files are never overwritten."""
    if not root.exists() or (root / GENERATING).exists() or read_manifest(root) is not None:
        return
    if not root.is_dir():
        raise MSRNError(f"{root}: not a folder; the {what} data set is generated into a folder")
    if any(root.iterdir()):
        raise MSRNError(
            f"{root} holds files msrn did not generate; the {what} data set is written only into an empty "
            "or new folder, or one it generated before (give --data NEW_FOLDER)"
        )


def ensure_generated(
    root: Path, what: str, expected: dict, complete: Callable[[Path], bool], write: Callable[[Path], dict[str, str]]
) -> Path:
    """Generate into root unless complete(root): write(root) draws the images and returns the text files
    to write beside them (name -> content); the manifest `expected` is written last, so a generation
    that stops half way is redone on the next call."""
    root = Path(root)
    if complete(root):
        return root
    _check_writable(root, what)
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / GENERATING).touch()
        (root / MANIFEST).unlink(missing_ok=True)
        for name, text in write(root).items():
            atomic_write_text(root / name, text)
        atomic_write_text(root / MANIFEST, json.dumps(expected, indent=1) + "\n")
        (root / GENERATING).unlink()
    except OSError as e:
        raise MSRNError(f"{root}: cannot write the {what} data set ({e})") from None
    return root


def write_images(
    root: Path, counts: dict[str, int], draw: Callable[[], tuple[Image.Image, list[str], Any]]
) -> Iterator[tuple[str, str, list[str], Any]]:
    """Draw and save counts[split] images per split as images/<split>/<k>.png (each written atomically);
    yields (relative name, split, labels, whatever else draw returned)."""
    for split, count in counts.items():
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            img, labels, extra = draw()
            path = folder / f"{k:05d}.png"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            img.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, path)
            yield f"images/{split}/{path.name}", split, labels, extra
