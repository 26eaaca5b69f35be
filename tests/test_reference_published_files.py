"""Checks that must read the reference's real published files (../shared/reference-data).

Everything else tests the same formats on files the tests write (tests/reference_fakes.py). These
checks pin what only the real files can show: their bytes, their label orders, the values the design
quotes, and that the generated copies have the real files' structure. They skip, with the reason,
on a clone without ../shared: the reference has no license, so its files never ship with msrn.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from reference_fakes import official_keys, write_reference_data

from msrn.data import build_dataset
from msrn.data.nuswide import NUSWIDE_LABELS
from msrn.data.voc import VOC_LABELS
from msrn.labels.graph import adjacency, edges, read_cooccurrence
from msrn.labels.reference_files import COCO_LABELS, FILES, LABELS, dataset_for_classes
from msrn.safe_pickle import load_numpy_pickle

FOLDER = {"voc2007": "voc", "coco2014": "coco", "nuswide": "nuswide", "apparel": "apparel"}


@pytest.mark.parametrize("dataset", list(FILES))
def test_table_pins_the_published_files(dataset: str, published_reference_data: Path) -> None:
    """Every row's path, size and SHA-256 describe the published file."""
    for kind, entry in FILES[dataset].items():
        folder, name = entry.path.split("/")
        assert folder == FOLDER[dataset] and name.startswith(folder), (kind, entry.path)
        data = (published_reference_data / entry.path).read_bytes()
        assert len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256, entry.path


def _structure(obj: object) -> object:
    """Type, dtype and shape of a pickle's content, recursively (a dict's keys in order, its first value)."""
    if isinstance(obj, dict):
        keys = list(obj) if len(obj) < 20 else None  # image_label.pkl: file names differ
        return "dict", keys, _structure(next(iter(obj.values())))
    if isinstance(obj, list):
        return "list", _structure(obj[0])
    if isinstance(obj, np.ndarray):
        return "ndarray", obj.dtype.str, obj.shape
    return type(obj).__name__


def test_generated_copies_have_the_published_structure(published_reference_data: Path, tmp_path: Path) -> None:
    """The files the other tests generate match the real ones: key layout, pickle types, dtypes, shapes,
    the protocol and the numpy module path the pickles name."""
    real_keys = json.loads((published_reference_data / "official-checkpoint-keys.json").read_text())
    generated = official_keys()
    for ds, spec in real_keys.items():
        assert list(spec["keys"].items()) == list(generated[ds]["keys"].items()), ds
        assert {k: v for k, v in spec.items() if k != "keys"} == {k: v for k, v in generated[ds].items() if k != "keys"}
    fake = write_reference_data(tmp_path)
    for path in sorted(published_reference_data.rglob("*.pkl")):
        ours = fake / path.relative_to(published_reference_data)
        assert _structure(load_numpy_pickle(ours)) == _structure(load_numpy_pickle(path)), path.name
        assert ours.read_bytes()[:2] == path.read_bytes()[:2] == b"\x80\x03"  # protocol 3
        assert (b"numpy.core.multiarray" in ours.read_bytes()) == (b"numpy.core.multiarray" in path.read_bytes())


def test_label_orders(published_reference_data: Path) -> None:
    """Names in the order of the reference's files: COCO alphabetical (person, the most frequent label
    of its co-occurrence pickle, at 49), NUS-WIDE as its labels.txt, one dataset per label count."""
    assert list(COCO_LABELS) == sorted(COCO_LABELS) and len(set(COCO_LABELS)) == 80
    coco = read_cooccurrence(published_reference_data / "coco" / "coco_adj.pkl")
    assert COCO_LABELS[int(np.argmax(coco.nums))] == "person" == COCO_LABELS[49]
    assert coco.nums[49] == 45174
    assert list(LABELS["nuswide"]) == list(NUSWIDE_LABELS)
    assert list(NUSWIDE_LABELS) == (published_reference_data / "nuswide" / "labels.txt").read_text().split()
    keys = json.loads((published_reference_data / "official-checkpoint-keys.json").read_text())
    for dataset, folder in FOLDER.items():  # each published checkpoint's label count names its dataset
        assert dataset_for_classes(keys[folder]["num_classes"]) == dataset
        assert keys[folder]["keys"]["fc2.weight"][0] == len(LABELS[dataset])
    assert dataset_for_classes(5) is None


def test_coco_category_ids(published_reference_data: Path) -> None:
    """category.json lists COCO's 80 category ids (1..90 with gaps) in id order, mapped to 1..80."""
    table = json.loads((published_reference_data / "coco" / "category.json").read_text())
    ids = [int(k) for k in table]
    assert ids == sorted(ids) and len(ids) == 80 and ids[-1] == 90
    assert list(table.values()) == list(range(1, 81))


def test_voc_graph_values(published_reference_data: Path) -> None:
    """The VOC pickle's counts and the six edges the design quotes; in the mask the direction flips."""
    co = read_cooccurrence(published_reference_data / "voc" / "voc_adj.pkl")
    voc = list(VOC_LABELS)
    assert co.nums[voc.index("aeroplane")] == 238 and co.nums[voc.index("person")] == 2008
    named = {(voc[i], voc[j]) for i, j, _ in edges(co)}
    assert named == {("bicycle", "person"), ("bottle", "person"), ("diningtable", "person"), ("horse", "person"),
                     ("motorbike", "person"), ("diningtable", "chair")}  # fmt: skip
    mask = adjacency(co) > 0
    off = {(int(i), int(j)) for i, j in zip(*np.nonzero(mask), strict=True) if i != j}
    assert off == {(voc.index(b), voc.index(a)) for a, b in named}  # person attends to bicycle


def test_nuswide_and_apparel_edge_counts(published_reference_data: Path) -> None:
    """Applied literally, the NUS-WIDE pickle gives 2 edges and Apparel's 24 (docs/design.md §2)."""
    nus = read_cooccurrence(published_reference_data / "nuswide" / "nuswide_adj.pkl")
    apparel = read_cooccurrence(published_reference_data / "apparel" / "apparel_adj.pkl")
    assert len(edges(nus)) == 2 and len(edges(apparel)) == 24
    np.testing.assert_allclose(nus.nums, 1 + nus.counts.sum(0))


def test_apparel_split_sizes(published_reference_data: Path, tmp_path: Path) -> None:
    """image_label.pkl holds 11384 images; the reference's seeded split halves them."""
    source = published_reference_data / "apparel" / "image_label.pkl"
    table = load_numpy_pickle(source)
    assert len(table) == 11384
    (tmp_path / "apparel").mkdir()
    for name in table:
        (tmp_path / "apparel" / name).touch()
    sizes = [len(build_dataset("apparel", tmp_path, split, apparel_labels=source)) for split in ("train", "test")]
    assert sizes == [5692, 5692]
