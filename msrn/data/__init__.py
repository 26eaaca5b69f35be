"""Dataset readers (VOC 2007, COCO 2014, NUS-WIDE, apparel, CSV, synthetic, scenes), transforms and loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any

from msrn.data.apparel import read_apparel
from msrn.data.base import ImageDataset, MultiLabelData, open_image
from msrn.data.coco import read_coco2014
from msrn.data.csvfile import read_csv_dataset
from msrn.data.generated import default_root
from msrn.data.nuswide import read_nuswide
from msrn.data.scenes import ensure_scenes, read_scenes
from msrn.data.synthetic import ensure_synthetic, read_synthetic
from msrn.data.voc import read_voc2007
from msrn.errors import MSRNError
from msrn.options import Options, option

__all__ = [
    "DATASETS", "DEFAULT_SPLITS", "READER_OPTIONS", "DatasetOptions", "ImageDataset", "MultiLabelData",
    "apparel_labels_option",
    "build_dataset", "data_option", "dataset_option", "ensure_scenes", "ensure_synthetic",
    "keep_unannotated_option", "open_image", "reader_options",
]  # fmt: skip

DATASETS: tuple[str, ...] = ("voc2007", "coco2014", "nuswide", "apparel", "csv", "synthetic", "scenes")
DEFAULT_SPLITS: dict[str, tuple[str, str]] = {
    "voc2007": ("trainval", "test"),
    "coco2014": ("train", "val"),
    "nuswide": ("train", "val"),
    "apparel": ("train", "test"),
    "csv": ("train", "test"),
    "synthetic": ("train", "test"),
    "scenes": ("train", "test"),
}
_READERS: dict[str, Callable[..., MultiLabelData]] = {
    "voc2007": read_voc2007,
    "coco2014": read_coco2014,
    "nuswide": read_nuswide,
    "apparel": read_apparel,
    "csv": read_csv_dataset,
    "synthetic": read_synthetic,
    "scenes": read_scenes,
}
# reader options that `msrn train` (TrainConfig fields), `evaluate` and `inspect` take, by the readers' names
READER_OPTIONS: tuple[str, ...] = ("keep_unannotated", "apparel_labels")
GENERATED = ("synthetic", "scenes")  # data sets msrn draws itself; without --data they go to msrn's cache


def build_dataset(name: str, data: str | Path, split: str, **options: Any) -> MultiLabelData:
    """Read split `split` of dataset kind `name` from `data`; options go to the reader (e.g. seed)."""
    if name not in _READERS:
        raise MSRNError(f"unknown dataset '{name}' (choose from {', '.join(DATASETS)})")
    reader = _READERS[name]
    accepted = [p for p in signature(reader).parameters if p not in ("data", "path", "split", "name")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MSRNError(
            f"dataset '{name}' takes no option {', '.join(unknown)} (options: {', '.join(accepted) or 'none'})"
        )
    if not str(data) and name in GENERATED:
        data = default_root(name)  # never the current folder: generating there would overwrite its files
    return reader(Path(data), split, **options)


def reader_options(source: Any) -> dict[str, Any]:
    """The reader options set on `source` (a TrainConfig or parsed arguments), leaving out those left unset."""
    values = {name: getattr(source, name, None) for name in READER_OPTIONS}
    return {name: value for name, value in values.items() if value is not None and value is not False}


def dataset_option(required: bool = True) -> Any:
    """--dataset: the reader to use."""
    return option(None, "dataset kind", choices=DATASETS, required=required)


def data_option(required: bool = True) -> Any:
    """--data: where the dataset is."""
    return option("" if not required else None, "dataset root folder (the CSV file for --dataset csv)",
                  required=required)  # fmt: skip


def keep_unannotated_option() -> Any:
    """--keep-unannotated (coco2014's reader)."""
    return option(False, "coco2014: keep images without annotations (all-zero targets); the reference leaves "
                         "them out")  # fmt: skip


def apparel_labels_option() -> Any:
    """--apparel-labels (apparel's reader)."""
    return option(None, "apparel: the reference's image_label.pkl, for its split and labels (default: "
                        "image_label.pkl in the data folder or its apparel/ folder, when there)",
                  metavar="FILE")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DatasetOptions(Options):
    """The data set a command reads: the options inspect, evaluate and labels share (declared once here; a
    command redeclares `split` only to say which split it reads by default)."""

    dataset: str = dataset_option()
    data: str = data_option()
    split: str | None = option(None, "split to read (default: the command's)")
    keep_unannotated: bool = keep_unannotated_option()
    apparel_labels: str | None = apparel_labels_option()

    def split_name(self, role: int) -> str:
        """The split given, else the dataset's training (role 0) or test (role 1) split."""
        return self.split or DEFAULT_SPLITS[self.dataset][role]

    def read(self, split: str) -> MultiLabelData:
        """The split `split` of the data set, read with the reader options given."""
        return build_dataset(self.dataset, self.data, split, **reader_options(self))
