"""The built-in synthetic data: determinism, idempotent generation, structure; and `msrn inspect`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from msrn.cli import main as cli_main
from msrn.data import build_dataset, ensure_synthetic
from msrn.data.synthetic import EXCLUSIVE, GROUPS, MANIFEST, SYNTHETIC_LABELS

SMALL = {"num_train": 40, "num_test": 12}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = tree_bytes(ensure_synthetic(tmp_path / "a", seed=3, **SMALL))
    b = tree_bytes(ensure_synthetic(tmp_path / "b", seed=3, **SMALL))
    c = tree_bytes(ensure_synthetic(tmp_path / "c", seed=4, **SMALL))
    assert a == b and len(a) == 40 + 12 + 4
    assert {"annotations.csv", "labels.txt", "README.md", MANIFEST} <= set(a)
    assert a["annotations.csv"] != c["annotations.csv"]
    assert a["labels.txt"].decode().split() == list(SYNTHETIC_LABELS)


def test_generation_is_idempotent_and_repairs(tmp_path: Path) -> None:
    root = ensure_synthetic(tmp_path / "s", **SMALL)
    image = root / "images" / "train" / "00000.png"
    stamp = image.stat().st_mtime_ns
    before = tree_bytes(root)
    ensure_synthetic(root, **SMALL)
    assert image.stat().st_mtime_ns == stamp  # nothing rewritten
    (root / MANIFEST).unlink()  # as if interrupted before the marker was written
    image.write_bytes(b"half")
    ensure_synthetic(root, **SMALL)
    assert tree_bytes(root) == before


def test_synthetic_dataset_structure(tmp_path: Path) -> None:
    train = build_dataset("synthetic", tmp_path / "syn", "train")
    test = build_dataset("synthetic", tmp_path / "syn", "test")
    assert (len(train), len(test)) == (1500, 500)
    assert train.labels == test.labels == list(SYNTHETIC_LABELS) and len(SYNTHETIC_LABELS) == 12
    assert train.images[0].is_file() and train.images[0].suffix == ".png"
    assert (train.targets.sum(axis=1) >= 1).all()
    col = {label: k for k, label in enumerate(train.labels)}
    for a, b in EXCLUSIVE:
        assert not (train.targets[:, col[a]] & train.targets[:, col[b]]).any()
    t = train.targets.astype(float)
    co = t.T @ t / t.sum(axis=0)  # P(column label | row label)
    inside = [co[col[a], col[b]] for g in GROUPS for a in g for b in g if a != b and (a, b) not in EXCLUSIVE]
    across = [co[col[a], col[b]] for g in GROUPS for h in GROUPS if g != h for a in g for b in h]
    assert np.mean(inside) > 2 * np.mean(across)
    assert min(train.label_counts().values()) > 150


def test_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "list.csv").write_text("image,labels,split\na.png,cat|dog,train\nb.png,dog,train\nc.png,,test\n")
    assert cli_main(["inspect", "--dataset", "csv", "--data", str(tmp_path / "list.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 2 and out["labels"] == ["cat", "dog"]
    assert out["label_counts"] == {"cat": 1, "dog": 2} and "difficult_counts" not in out
    assert cli_main(["inspect", "--dataset", "csv", "--data", str(tmp_path / "list.csv"), "--split", "test"]) == 0
    table = capsys.readouterr().out
    assert "1 images" in table and "dog" in table


def test_inspect_voc_difficult(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (tmp_path / "VOC2007" / "JPEGImages").mkdir()
    (tmp_path / "VOC2007" / "Annotations").mkdir()
    (main / "test.txt").write_text("000001\n")
    obj = "<object><name>dog</name><difficult>1</difficult></object>"
    (tmp_path / "VOC2007" / "Annotations" / "000001.xml").write_text(f"<annotation>{obj}</annotation>")
    args = ["inspect", "--dataset", "voc2007", "--data", str(tmp_path), "--split", "test", "--json"]
    assert cli_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 1 and out["label_counts"]["dog"] == 0 and out["difficult_counts"]["dog"] == 1
    assert len(out["labels"]) == 20 and set(out["difficult_counts"]) == set(out["labels"])


def test_inspect_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", "--dataset", "voc2007", "--data", str(tmp_path / "none"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "no VOC 2007 tree" in captured.err
