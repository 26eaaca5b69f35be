"""The built-in data sets (synthetic, scenes): determinism, idempotent generation, structure; `msrn inspect`."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import msrn.data.synthetic
from msrn.cli import main as cli_main
from msrn.data import build_dataset, ensure_synthetic
from msrn.data.generated import GENERATING
from msrn.data.scenes import (
    AMBIGUOUS,
    AMBIGUOUS_PAIRS,
    LABELS,
    MIN_VISIBLE,
    SCENES,
    SCENES_LABELS,
    ensure_scenes,
    object_sides,
    read_scenes,
    render_scene,
    sample_labels,
    size_buckets,
)
from msrn.data.synthetic import EXCLUSIVE, GROUPS, MANIFEST, SYNTHETIC_LABELS
from msrn.errors import MSRNError
from msrn.labels.graph import TAU

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
    (root / MANIFEST).unlink()  # as if interrupted before the manifest was written: the marker is still there
    (root / GENERATING).touch()
    image.write_bytes(b"half")
    ensure_synthetic(root, **SMALL)
    assert tree_bytes(root) == before


def test_without_data_it_goes_to_the_cache_not_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`msrn train --dataset synthetic` without --data (data "") used to write README.md, images/,
    annotations.csv and manifest.json into the current folder, over a project's own README."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MSRN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(msrn.data.synthetic, "ensure_synthetic", partial(ensure_synthetic, num_train=30, num_test=10))
    data = build_dataset("synthetic", "", "train")
    assert sorted(p.name for p in project.iterdir()) == ["README.md"]
    assert (project / "README.md").read_text() == "my project\n"
    assert data.root == tmp_path / "cache" / "data" / "synthetic" and len(data) == 30


@pytest.mark.parametrize("ensure", [ensure_synthetic, ensure_scenes])
def test_never_writes_over_files_it_did_not_generate(ensure, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("keep me\n")
    with pytest.raises(MSRNError, match=r"mine holds files msrn did not generate.*--data NEW_FOLDER"):
        ensure(folder, num_train=4, num_test=2)
    assert [p.name for p in folder.iterdir()] == ["README.md"] and (folder / "README.md").read_text() == "keep me\n"
    (folder / "manifest.json").write_text('{"name": "a web app"}')  # another tool's manifest is not msrn's
    with pytest.raises(MSRNError, match="did not generate"):
        ensure(folder, num_train=4, num_test=2)


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


# ----------------------------------------------------------------------------- scenes: the built-in benchmark

SCENES_SMALL = {"num_train": 60, "num_test": 20}


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_scenes(tmp_path_factory.mktemp("scenes") / "s", seed=5, **SCENES_SMALL)


def test_scenes_same_seed_same_files(scenes_root: Path, tmp_path: Path) -> None:
    again = tree_bytes(ensure_scenes(tmp_path / "b", seed=5, **SCENES_SMALL))
    other = tree_bytes(ensure_scenes(tmp_path / "c", seed=6, **SCENES_SMALL))
    assert tree_bytes(scenes_root) == again and len(again) == 60 + 20 + 5
    assert again["annotations.csv"] != other["annotations.csv"]
    assert again["labels.txt"].decode().split() == list(SCENES_LABELS)
    assert "orange/ball" in again["README.md"].decode() and "not real data" in again["README.md"].decode()
    stamp = (scenes_root / "annotations.csv").stat().st_mtime_ns
    assert read_scenes(scenes_root, "test").name == "scenes"  # an existing generation is read as it is
    assert (scenes_root / "annotations.csv").stat().st_mtime_ns == stamp


def test_scenes_objects_span_the_size_buckets(scenes_root: Path) -> None:
    train = read_scenes(scenes_root, "train")
    sides = object_sides(train)
    assert ((sides > 0) == (train.targets == 1)).all()
    present = sides[sides > 0]
    assert present.min() < 10 and present.max() > 55  # 8 to 64 px, log-uniform
    buckets = size_buckets(sides)
    assert sum(int(b.sum()) for b in buckets.values()) == int((train.targets == 1).sum())
    for name, b in buckets.items():  # each bucket holds a fair share of the objects (a third in expectation)
        assert b.sum() > 0.2 * present.size, name


def test_scenes_clutter_and_occlusion(scenes_root: Path) -> None:
    rows = list(csv.DictReader(open(scenes_root / "objects.csv", encoding="utf-8")))
    labelled = [r for r in rows if r["label"]]
    clutter = [r for r in rows if not r["label"]]
    assert len({r["image"] for r in clutter}) == 80  # every image has clutter ...
    appearances = {(sh, c) for _, sh, c in LABELS.values()}
    assert all((r["shape"], r["colour"]) not in appearances for r in clutter)  # ... that looks like no label
    shapes, colours = {r["shape"] for r in clutter}, {r["colour"] for r in clutter}
    assert {"disc", "star"} <= shapes and {"orange", "white"} <= colours  # though it shares their shapes and colours
    visible = np.array([float(r["visible"]) for r in labelled])
    assert visible.min() >= MIN_VISIBLE - 0.05 and (visible < 0.95).mean() > 0.1  # partly hidden, never mostly


def test_scenes_ambiguous_pairs_look_alike_and_need_context(scenes_root: Path) -> None:
    assert len(AMBIGUOUS_PAIRS) == 3
    for a, b in AMBIGUOUS_PAIRS:
        assert LABELS[a][1:] == LABELS[b][1:] and LABELS[a][0] != LABELS[b][0]
        drawn = [render_scene([x], 128, np.random.RandomState(1))[0] for x in (a, b)]
        assert np.array_equal(np.asarray(drawn[0]), np.asarray(drawn[1]))  # same pixels for the same draws
    others = [v[1:] for k, v in LABELS.items() if k not in AMBIGUOUS]
    assert len(set(others)) == len(others)  # every other label has an appearance of its own
    train = read_scenes(scenes_root, "train")
    col = {label: j for j, label in enumerate(train.labels)}
    for label in AMBIGUOUS:  # an ambiguous label always comes with a distinct label of its scene
        partners = [col[m] for m in SCENES[LABELS[label][0]] if m not in AMBIGUOUS]
        rows = train.targets[:, col[label]] == 1
        assert rows.any() and (train.targets[rows][:, partners] == 1).any(axis=1).all(), label


def test_scenes_cooccurrence_gives_the_graph_its_scenes() -> None:
    rng = np.random.RandomState(0)
    names = list(SCENES_LABELS)
    t = np.zeros((3000, len(names)), dtype=np.int8)
    for i in range(len(t)):
        t[i, [names.index(x) for x in sample_labels(rng)]] = 1
    counts = t.T.astype(float) @ t
    cond = counts / np.diag(counts)[:, None]  # P(column label | row label)
    same = np.array([[LABELS[a][0] == LABELS[b][0] and a != b for b in names] for a in names])
    other = np.array([[LABELS[a][0] != LABELS[b][0] for b in names] for a in names])
    assert cond[same].mean() > 3 * cond[other].mean()
    assert cond[same].min() >= TAU  # every pair within a scene passes the graph's threshold ...
    assert cond[other].max() < TAU  # ... and no pair across scenes does
