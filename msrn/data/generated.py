"""The scaffold shared by msrn's generated data sets (synthetic, scenes): where they go, when a
folder may be written, and the images/ + annotations.csv + manifest layout written atomically."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from msrn.download import cache_dir
from msrn.errors import MSRNError
from msrn.io import FileLock, atomic_write_text

MANIFEST = "manifest.json"
# present while a generation replaces the content of a folder that exists: a folder holding it is
# msrn's, half done, and is generated afresh
GENERATING = ".msrn-generating"

log = logging.getLogger(__name__)


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
    if not root.exists() or _generated_here(root):
        return
    if not root.is_dir():
        raise MSRNError(f"{root}: not a folder; the {what} data set is generated into a folder")
    if any(root.iterdir()):
        raise MSRNError(
            f"{root} holds files msrn did not generate; the {what} data set is written only into an empty "
            "or new folder, or one it generated before (give --data NEW_FOLDER)"
        )


def _generated_here(root: Path) -> bool:
    """Whether root holds a generation of msrn's: complete (its manifest) or half done (its marker)."""
    return (root / GENERATING).exists() or read_manifest(root) is not None


def lock_path(root: Path) -> Path:
    """The lock file beside root that one generation into root holds (never removed: see FileLock)."""
    return root.parent / f".{root.name}.msrn-lock"


def ensure_generated(
    root: Path, what: str, expected: dict, complete: Callable[[Path], bool], write: Callable[[Path], dict[str, str]]
) -> Path:
    """Generate into root unless complete(root): write(folder) draws the images into folder and returns the
    text files to write beside them (name -> content); the manifest `expected` is written last.

    Safe when several processes (torchrun's ranks, two runs) ask at once: one takes the lock beside root
    and generates while the others wait, then find the set complete. The set is drawn in a private
    folder beside root and moved into place only when complete (_move_into_place), so nobody reads
    half of one, and a generation killed half way leaves root as it was."""
    root = Path(root)
    if complete(root):
        return root
    _check_writable(root, what)
    where = root.absolute()  # `--data .` too has a parent to lock in and to draw beside
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path(where))
        if not lock.acquire(wait=False):
            log.info("waiting for process %s, which is generating the %s data set in %s", lock.holder(), what, root)
            lock.acquire(wait=True)
        with lock:
            if complete(root):  # the process that held the lock generated it
                return root
            _check_writable(root, what)
            for stale in where.parent.glob(f".{glob.escape(where.name)}.*.msrn-tmp"):  # killed generations'
                shutil.rmtree(stale, ignore_errors=True)
            fresh = where.parent / f".{where.name}.{uuid.uuid4().hex}.msrn-tmp"
            fresh.mkdir()
            try:
                for name, text in write(fresh).items():
                    atomic_write_text(fresh / name, text)
                atomic_write_text(fresh / MANIFEST, json.dumps(expected, indent=1) + "\n")
                _move_into_place(fresh, where)
            finally:
                shutil.rmtree(fresh, ignore_errors=True)
    except OSError as e:
        raise MSRNError(f"{root}: cannot write the {what} data set ({e})") from None
    return root


def _move_into_place(fresh: Path, root: Path) -> None:
    """Make the complete generation `fresh` root's content: one rename where root does not exist yet. A folder
    that exists (empty, or an earlier generation of msrn's: another seed or size, or one left half done)
    is kept, since it may be a working folder or a mount point; its entries are replaced under the
    marker that keeps it msrn's until the manifest, moved last, completes it."""
    if not root.exists():
        os.rename(fresh, root)
        return
    (root / GENERATING).touch()
    (root / MANIFEST).unlink(missing_ok=True)
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.name != GENERATING:
            entry.unlink()
    for entry in sorted(fresh.iterdir(), key=lambda e: e.name == MANIFEST):  # the manifest last
        os.rename(entry, root / entry.name)
    (root / GENERATING).unlink()


def write_images(
    root: Path, counts: dict[str, int], draw: Callable[[], tuple[Image.Image, list[str], Any]]
) -> Iterator[tuple[str, str, list[str], Any]]:
    """Draw and save counts[split] images per split as images/<split>/<k>.png (into ensure_generated's
    private folder, which nobody reads before it is complete); yields (relative name, split, labels,
    whatever else draw returned)."""
    for split, count in counts.items():
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            img, labels, extra = draw()
            name = f"{k:05d}.png"
            img.save(folder / name, format="PNG", compress_level=1)
            yield f"images/{split}/{name}", split, labels, extra
