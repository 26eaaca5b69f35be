"""The reference implementation's label files by name: its GloVe vectors and co-occurrence pickles.

`--word-vectors reference` and `--cooccurrence reference` stand for the file the reference
published for the dataset, pinned to one commit and SHA-256. It is fetched once into msrn's
cache (MSRN_CACHE), as ImageNet weights are. MSRN_REFERENCE_URL replaces the address of the
reference's `data/` folder: a mirror, or a `file://` copy for machines without a network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

from msrn.data.apparel import APPAREL_LABELS
from msrn.data.nuswide import NUSWIDE_LABELS
from msrn.data.voc import VOC_LABELS
from msrn.download import fetch
from msrn.errors import MSRNError

REFERENCE = "reference"  # the source name that selects these files
COMMIT = "469d28f5ed162976996634bd7729a86b73a98e92"  # chehao2628/MSRN
BASE_URL = f"https://raw.githubusercontent.com/chehao2628/MSRN/{COMMIT}/data"
URL_ENV = "MSRN_REFERENCE_URL"
OPTIONS = {"word_vectors": "--word-vectors", "cooccurrence": "--cooccurrence"}  # the option taking a local copy


S = TypeVar("S")  # a label source: a path, a name, an array or a Cooccurrence


class ReferenceFile(NamedTuple):
    """One published file: its path under the reference's data/ folder, size and SHA-256."""

    path: str
    size: int
    sha256: str


FILES: dict[str, dict[str, ReferenceFile]] = {
    "voc2007": {
        "word_vectors": ReferenceFile("voc/voc_glove_word2vec.pkl", 24161,
                                      "0ca7081ae4d373e9c174c1ce25ed5d416e43c9d25b2f51462e9b6dbd6ffc3970"),
        "cooccurrence": ReferenceFile("voc/voc_adj.pkl", 3582,
                                      "e5ce7a18b115603acae0983ed85d94a38d2456d6796ea15f65dbeed2b0d996b0"),
    },
    "coco2014": {
        "word_vectors": ReferenceFile("coco/coco_glove_word2vec.pkl", 96161,
                                      "a1215dd18e1e5f9560a4b25be4df5cbc83f02461f03774602492640a6c58ddf8"),
        "cooccurrence": ReferenceFile("coco/coco_adj.pkl", 52065,
                                      "351765f9684a6aa9a6025d0c76c2c5488cd54183a4601a91dc39cf62dffe4c08"),
    },
    "nuswide": {
        "word_vectors": ReferenceFile("nuswide/nuswide_glove_word2vec.pkl", 219113,
                                      "5ac6bd3f3263f03e669bf998ecd03f11c2f07e549290c7922cdcf5f433243605"),
        "cooccurrence": ReferenceFile("nuswide/nuswide_adj.pkl", 53361,
                                      "53c86543c29d617ecbf5d722cfa1702ca7815016139572d8bcd2caa03d7b7598"),
    },
    "apparel": {
        "word_vectors": ReferenceFile("apparel/apparel_glove_word2vec.pkl", 29763,
                                      "5e0c5d236715a2ef93d8c57402ce3ae97bfeee40e4b402922eba51758dad4c7c"),
        "cooccurrence": ReferenceFile("apparel/apparel_adj.pkl", 1278,
                                      "ba5dad3929e7beb506828bdb39bfd657de937aa5b4a15ff8e7d4545afe8553cf"),
    },
}  # fmt: skip

# COCO's 80 names sorted alphabetically: the reference's loader sorts them, so this is the order of
# its COCO pickles and of its checkpoint's outputs (person is index 49)
COCO_LABELS = (
    "airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed", "bench",
    "bicycle", "bird", "boat", "book", "bottle", "bowl", "broccoli", "bus", "cake", "car", "carrot", "cat",
    "cell phone", "chair", "clock", "couch", "cow", "cup", "dining table", "dog", "donut", "elephant",
    "fire hydrant", "fork", "frisbee", "giraffe", "hair drier", "handbag", "horse", "hot dog", "keyboard",
    "kite", "knife", "laptop", "microwave", "motorcycle", "mouse", "orange", "oven", "parking meter",
    "person", "pizza", "potted plant", "refrigerator", "remote", "sandwich", "scissors", "sheep", "sink",
    "skateboard", "skis", "snowboard", "spoon", "sports ball", "stop sign", "suitcase", "surfboard",
    "teddy bear", "tennis racket", "tie", "toaster", "toilet", "toothbrush", "traffic light", "train",
    "truck", "tv", "umbrella", "vase", "wine glass", "zebra",
)  # fmt: skip
# each dataset's label names in the order of the reference's files and checkpoint outputs
LABELS: dict[str, tuple[str, ...]] = {
    "voc2007": VOC_LABELS, "coco2014": COCO_LABELS, "nuswide": NUSWIDE_LABELS, "apparel": APPAREL_LABELS,
}  # fmt: skip


def default_sources(dataset: str) -> dict[str, str]:
    """The label inputs a dataset takes when none are named: the reference's own files on the benchmarks."""
    return {kind: REFERENCE for kind in OPTIONS} if dataset in FILES else {}


def _entry(dataset: str, kind: str) -> ReferenceFile:
    """The table row of (dataset, kind), or one line saying which datasets have reference files."""
    if dataset not in FILES:
        raise MSRNError(
            f"{OPTIONS[kind]} reference: the reference publishes no {kind.replace('_', '-')} file for dataset "
            f"{dataset!r} (only for {', '.join(FILES)}); give a file instead"
        )
    return FILES[dataset][kind]


def reference_url(dataset: str, kind: str) -> str:
    """Where the reference's file of `kind` (word_vectors, cooccurrence) for `dataset` is fetched from."""
    base = os.environ.get(URL_ENV) or BASE_URL
    return f"{base.rstrip('/')}/{_entry(dataset, kind).path}"


def reference_file(dataset: str, kind: str) -> Path:
    """A local copy of the reference's file: from the cache, else fetched once and its SHA-256 checked."""
    entry, url = _entry(dataset, kind), reference_url(dataset, kind)
    try:
        return fetch(url, entry.sha256)
    except MSRNError as e:
        raise MSRNError(f"{e}; download it by other means and pass the copy as {OPTIONS[kind]} FILE") from None


def resolve(source: S, dataset: str, kind: str) -> S | Path:
    """`source` itself, unless it names the reference's file ('reference'): then that file's local path."""
    if isinstance(source, str) and source == REFERENCE:
        return reference_file(dataset, kind)
    return source


def dataset_for_classes(num_classes: int) -> str | None:
    """The reference dataset with this many labels (20 VOC, 80 COCO, 81 NUS-WIDE, 11 Apparel), if any."""
    return next((name for name, labels in LABELS.items() if len(labels) == num_classes), None)


def check_label_order(dataset: str, labels: Sequence[str], where: str) -> None:
    """Refuse labels that are not in the order of the reference's files: their rows would be other labels'."""
    want = list(LABELS[dataset])
    if list(labels) == want:
        return
    if len(labels) != len(want):
        raise MSRNError(f"{where}: {len(labels)} labels, the reference's {dataset} files hold {len(want)}")
    i = next(k for k, (a, b) in enumerate(zip(labels, want, strict=True)) if a != b)
    raise MSRNError(
        f"{where}: label {i} is {labels[i]!r}, the reference's {dataset} files hold {want[i]!r} there; "
        "they need the labels in the reference's order"
    )
