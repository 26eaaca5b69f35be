"""The common dataset record (`MultiLabelData`) and the torch `ImageDataset` (decoding: msrn.images)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msrn.errors import MSRNError
from msrn.images import open_image
from msrn.targets import UNKNOWN

log = logging.getLogger(__name__)

PathLike = str | Path
_COUNTER_SLOTS = 257  # skip counter slots: the main process, then one per DataLoader worker
IN_MEMORY_LIMIT = 4 * 2**30  # decoded bytes in_memory() holds at most: small data sets such as scenes (98 MiB)


@dataclass
class MultiLabelData:
    """What a reader found: image paths and an N x C int8 target matrix (1 / 0 / -1 difficult / -2 unknown;
    msrn.targets says what each means).

    `note` says how the reader chose the images where it had a choice (e.g. which apparel split).
    """

    name: str
    split: str
    root: Path
    images: list[Path]
    labels: list[str]
    targets: np.ndarray
    note: str = ""
    exif_orientation: bool = False  # decode with the EXIF orientation applied (user photos; not the benchmarks)
    pixels: list[np.ndarray] | None = None  # the images decoded once, H x W x 3 uint8 (in_memory); None: read files

    def __post_init__(self) -> None:
        """Check that images, labels, targets and pixels agree, so a reader bug shows up at once."""
        self.targets = np.asarray(self.targets, dtype=np.int8).reshape(len(self.images), len(self.labels))
        if self.pixels is not None and len(self.pixels) != len(self.images):
            raise MSRNError(f"{self.name} {self.split}: {len(self.pixels)} decoded images for {len(self.images)} files")

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def label_counts(self) -> dict[str, int]:
        """Number of images where each label is positive (target == 1)."""
        counts = (self.targets == 1).sum(axis=0)
        return {label: int(c) for label, c in zip(self.labels, counts, strict=True)}

    def difficult_counts(self) -> dict[str, int]:
        """Number of images where each label is only difficult (target == -1, VOC)."""
        counts = (self.targets == -1).sum(axis=0)
        return {label: int(c) for label, c in zip(self.labels, counts, strict=True)}

    def unknown_counts(self) -> dict[str, int]:
        """Number of images where each label's presence is unknown (target == -2, the CSV `unknown` column)."""
        counts = (self.targets == UNKNOWN).sum(axis=0)
        return {label: int(c) for label, c in zip(self.labels, counts, strict=True)}


def require_dir(path: Path, what: str) -> Path:
    """Return `path` if it is a folder, else raise MSRNError saying what was expected there."""
    if not path.is_dir():
        raise MSRNError(f"{path}: folder not found (expected {what})")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else raise MSRNError saying what was expected there."""
    if not path.is_file():
        raise MSRNError(f"{path}: file not found (expected {what})")
    return path


def read_text(path: Path) -> str:
    """Read a UTF-8 text file; unreadable or non-text content is an MSRNError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MSRNError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MSRNError(f"{path}: cannot read as UTF-8 text ({e})") from None


def in_memory(data: MultiLabelData, limit: int = IN_MEMORY_LIMIT) -> MultiLabelData:
    """`data` with every image decoded once, as the files would be on each read: training then reads no
    file and needs no loading process. Unreadable images stop here, naming the file."""
    pixels, total = [], 0
    for path in data.images:
        arr = np.asarray(open_image(path, exif_orientation=data.exif_orientation))
        total += arr.nbytes
        if total > limit:
            raise MSRNError(
                f"{data.name} {data.split}: decoded images exceed {limit / 2**30:.0f} GiB at {path}; "
                "too large to hold in memory (leave --in-memory off)"
            )
        pixels.append(arr)
    return dataclasses.replace(data, pixels=pixels)


class ImageDataset(torch.utils.data.Dataset):
    """Torch dataset over `MultiLabelData`: item i is (3xHxW float32 image, C float32 target, index).

    on_error="stop" turns an unreadable image into an MSRNError naming the file. on_error="skip" logs
    a warning naming the file and returns the next readable image instead (with that image's own
    target and index, so the triple stays consistent). `skipped` counts skip events in a shared-memory
    tensor with one slot per process (the main process and each DataLoader worker, forked or spawned,
    write only their own slot), so the main process sees the total over all workers; an image skipped
    in every epoch is counted once per epoch.
    """

    def __init__(
        self,
        data: MultiLabelData,
        transform: Callable[[Image.Image], torch.Tensor],
        on_error: str = "stop",
    ) -> None:
        if on_error not in ("stop", "skip"):
            raise MSRNError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
        self.data = data
        self.transform = transform
        self.on_error = on_error
        self._skipped = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self._targets = torch.from_numpy(data.targets.astype(np.float32))

    @property
    def skipped(self) -> int:
        """Number of unreadable images skipped so far, summed over all worker processes."""
        return int(self._skipped.sum())

    def __len__(self) -> int:
        """Number of images."""
        return len(self.data)

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Decode (or take from memory) and transform image i."""
        if self.data.pixels is not None:
            image = self.transform(Image.fromarray(self.data.pixels[i]))
        else:
            image = self.transform(open_image(self.data.images[i], exif_orientation=self.data.exif_orientation))
        return image, self._targets[i], i

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Image tensor, target tensor and index of item i (or of its replacement when skipping)."""
        if self.on_error == "stop":
            return self._load(i)
        n = len(self.data)
        for step in range(n):
            j = (i + step) % n
            try:
                return self._load(j)
            except MSRNError as e:
                worker = torch.utils.data.get_worker_info()
                self._skipped[0 if worker is None else 1 + worker.id % (_COUNTER_SLOTS - 1)] += 1
                log.warning("skipping unreadable image: %s", e)
        raise MSRNError(f"no readable image in dataset {self.data.name} split {self.data.split}")
