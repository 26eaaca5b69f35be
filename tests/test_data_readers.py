"""Readers on small trees in each real layout: counts, label order, difficult handling, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msrn.data import DATASETS, DEFAULT_SPLITS, build_dataset
from msrn.data.apparel import APPAREL_LABELS
from msrn.data.nuswide import NUSWIDE_LABELS
from msrn.data.voc import VOC_LABELS
from msrn.errors import MSRNError


def tiny_image(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> None:
    """Write a 4x3 image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), colour).save(path)


def test_registry_is_complete() -> None:
    assert DATASETS == ("voc2007", "coco2014", "nuswide", "apparel", "csv", "synthetic", "scenes")
    assert set(DEFAULT_SPLITS) == set(DATASETS)
    assert DEFAULT_SPLITS["voc2007"] == ("trainval", "test")
    with pytest.raises(MSRNError, match="unknown dataset"):
        build_dataset("imagenet", "x", "train")


# ---------------------------------------------------------------- VOC 2007

VOC_XML = """<annotation><filename>{id}.jpg</filename>{objects}</annotation>"""
VOC_OBJ = "<object><name>{name}</name><difficult>{d}</difficult></object>"


def make_voc(root: Path, objects: dict[str, list[tuple[str, int]]], split: str = "trainval") -> Path:
    """VOCdevkit/VOC2007 with Annotations XML and ImageSets/Main/<split>.txt."""
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    for image_id, objs in objects.items():
        tiny_image(voc / "JPEGImages" / f"{image_id}.jpg")
        body = "".join(VOC_OBJ.format(name=n, d=d) for n, d in objs)
        (voc / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, objects=body))
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    return voc


VOC_OBJECTS = {
    "000005": [("chair", 0), ("chair", 1)],  # one difficult + one normal chair: positive
    "000007": [("car", 0), ("dog", 1)],  # only a difficult dog: difficult
    "000009": [("person", 0), ("horse", 0), ("person", 0)],
}


@pytest.mark.parametrize("level", ["parent", "devkit", "voc2007"])
def test_voc_xml_path(tmp_path: Path, level: str) -> None:
    voc = make_voc(tmp_path, VOC_OBJECTS)
    data = {"parent": tmp_path, "devkit": tmp_path / "VOCdevkit", "voc2007": voc}[level]
    d = build_dataset("voc2007", data, "trainval")
    assert d.labels == list(VOC_LABELS) and d.labels[0] == "aeroplane" and d.labels[-1] == "tvmonitor"
    assert len(d) == 3 and d.targets.dtype == np.int8 and d.targets.shape == (3, 20)
    assert d.images[0] == (voc / "JPEGImages" / "000005.jpg").resolve() and d.images[0].is_absolute()
    col = {label: k for k, label in enumerate(VOC_LABELS)}
    assert d.targets[0, col["chair"]] == 1
    assert d.targets[1, col["car"]] == 1 and d.targets[1, col["dog"]] == -1
    assert d.label_counts()["person"] == 1 and d.label_counts()["dog"] == 0
    assert d.difficult_counts()["dog"] == 1 and sum(d.difficult_counts().values()) == 1
    assert d.targets.sum() == 4 - 1  # chair, car, person, horse positive; dog -1


def test_voc_class_files_preferred(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, VOC_OBJECTS, split="test")
    main = voc / "ImageSets" / "Main"
    # per-class files disagree with the XML on purpose: they must win when all 20 exist
    for label in VOC_LABELS:
        value = {"cat": ["1", "0", "-1"], "bird": ["0", "0", "1"]}.get(label, ["-1", "-1", "-1"])
        pairs = enumerate(zip(VOC_OBJECTS, value, strict=True))
        lines = [f"{i} {v}" if k % 2 else f"{i}  {v}" for k, (i, v) in pairs]  # odd spacing is fine
        (main / f"{label}_test.txt").write_text("\n".join(lines) + "\n")
    d = build_dataset("voc2007", tmp_path, "test")
    cat, bird = VOC_LABELS.index("cat"), VOC_LABELS.index("bird")
    assert d.targets[:, cat].tolist() == [1, -1, 0]
    assert d.targets[:, bird].tolist() == [-1, -1, 1]
    assert d.label_counts()["cat"] == 1 and d.difficult_counts()["bird"] == 2
    assert d.label_counts()["chair"] == 0


def test_voc_bad_input(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, VOC_OBJECTS)
    with pytest.raises(MSRNError, match="no split 'foo'"):
        build_dataset("voc2007", tmp_path, "foo")
    with pytest.raises(MSRNError, match="val.txt"):
        build_dataset("voc2007", tmp_path, "val")
    with pytest.raises(MSRNError, match="no VOC 2007 tree"):
        build_dataset("voc2007", tmp_path / "missing", "trainval")
    (voc / "Annotations" / "000007.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(MSRNError, match=r"000007\.xml:1: malformed XML"):
        build_dataset("voc2007", tmp_path, "trainval")
    (voc / "Annotations" / "000007.xml").write_text(VOC_XML.format(id=7, objects=VOC_OBJ.format(name="ufo", d=0)))
    with pytest.raises(MSRNError, match="'ufo' is not one of the 20"):
        build_dataset("voc2007", tmp_path, "trainval")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"\xff\xfe\n")
    with pytest.raises(MSRNError, match=r"trainval\.txt: cannot read as UTF-8"):
        build_dataset("voc2007", tmp_path, "trainval")
    for label in VOC_LABELS:
        (voc / "ImageSets" / "Main" / f"{label}_trainval.txt").write_text("000005 -1\n000007 2\n")
    with pytest.raises(MSRNError, match=r"aeroplane_trainval\.txt:2: expected"):
        build_dataset("voc2007", tmp_path, "trainval")


# ---------------------------------------------------------------- COCO 2014


def test_coco_bad_input(tmp_path: Path) -> None:
    ann = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
        "annotations": [{"image_id": 42, "category_id": 90}, {"image_id": 42}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    path = tmp_path / "annotations" / "instances_val2014.json"
    path.write_text(json.dumps(ann))
    with pytest.raises(MSRNError, match=r"instances_val2014\.json: annotations\[1\] has no key 'category_id'"):
        build_dataset("coco2014", tmp_path, "val")
    ann["annotations"][1]["category_id"] = "1"
    path.write_text(json.dumps(ann))
    with pytest.raises(MSRNError, match="should be int"):
        build_dataset("coco2014", tmp_path, "val")
    ann["annotations"][1]["category_id"] = 1
    ann["categories"].append({"id": 5, "name": "person"})
    path.write_text(json.dumps(ann))
    with pytest.raises(MSRNError, match="duplicate category names"):
        build_dataset("coco2014", tmp_path, "val")
    ann["categories"][2] = {"id": 1, "name": "bus"}
    path.write_text(json.dumps(ann))
    with pytest.raises(MSRNError, match="duplicate category ids"):
        build_dataset("coco2014", tmp_path, "val")
    with pytest.raises(MSRNError, match="instances_train2014.json"):
        build_dataset("coco2014", tmp_path, "train")


# ---------------------------------------------------------------- NUS-WIDE


def write_nus(root: Path, rows: list[str], images_sub: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nus_wid_data.csv").write_text("filepath,label,split_name\n" + "\n".join(rows) + "\n")
    for row in rows:
        tiny_image(root / images_sub / row.split(",")[0])


def test_nuswide_parsing(tmp_path: Path) -> None:
    rows = [
        "a/1.jpg,\"['clouds', 'sky']\",train",
        "a/2.jpg,[],train",
        "b/3.jpg,\"['map', 'clouds']\",val",
        "b/4.jpg,['person'],train",
    ]
    write_nus(tmp_path, rows)
    d = build_dataset("nuswide", tmp_path, "train")
    assert len(NUSWIDE_LABELS) == 81 and d.labels == list(NUSWIDE_LABELS)
    assert len(d) == 3 and d.images[1] == (tmp_path / "a" / "2.jpg").resolve()
    assert d.targets[0, :2].tolist() == [1, 1] and d.targets[1].sum() == 0
    assert d.label_counts()["person"] == 1
    v = build_dataset("nuswide", tmp_path, "val")
    assert len(v) == 1 and v.targets[0, NUSWIDE_LABELS.index("map")] == 1


def test_nuswide_index_column_and_bad_encoding(tmp_path: Path) -> None:
    tiny_image(tmp_path / "x.jpg")
    (tmp_path / "nus_wid_data.csv").write_text(",filepath,label,split_name\n0,x.jpg,['sky'],train\n")
    d = build_dataset("nuswide", tmp_path, "train")
    assert d.images == [(tmp_path / "x.jpg").resolve()] and d.label_counts()["sky"] == 1
    (tmp_path / "nus_wid_data.csv").write_bytes(b"filepath,label,split_name\n\xff\xfe,[],train\n")
    with pytest.raises(MSRNError, match="not UTF-8"):
        build_dataset("nuswide", tmp_path, "train")


def test_nuswide_images_subfolder(tmp_path: Path) -> None:
    write_nus(tmp_path, ["x.jpg,['sky'],train"], images_sub="images")
    d = build_dataset("nuswide", tmp_path, "train")
    assert d.images == [(tmp_path / "images" / "x.jpg").resolve()]


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.jpg,\"['sky', 'unicorn']\",train", r"nus_wid_data\.csv:3: label 'unicorn' is not one of the 81"),
        ("a.jpg,\"__import__('os')\",train", r":3: label field .* not a Python list literal"),
        ('a.jpg,"[1, 2]",train', r":3: label field .* list of strings"),
        ("a.jpg,['sky'],test", r":3: split_name 'test'"),
        ("a.jpg,['sky']", r":3: expected 3 columns"),
    ],
)
def test_nuswide_bad_rows(tmp_path: Path, row: str, message: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "nus_wid_data.csv").write_text(f"filepath,label,split_name\nok.jpg,[],train\n{row}\n")
    with pytest.raises(MSRNError, match=message):
        build_dataset("nuswide", tmp_path, "train")


def test_nuswide_missing_images(tmp_path: Path) -> None:
    (tmp_path / "nus_wid_data.csv").write_text("filepath,label,split_name\nnope.jpg,[],train\n")
    with pytest.raises(MSRNError, match="images of nus_wid_data.csv not found"):
        build_dataset("nuswide", tmp_path, "train")


# ---------------------------------------------------------------- apparel


def make_apparel(root: Path) -> list[str]:
    names = []
    for k, folder in enumerate(["black_dress", "blue_pants", "red_shoes", "white_shorts", "green_shirt"]):
        for j in range(k + 2):
            tiny_image(root / folder / f"img{j}.jpg")
            names.append(f"{folder}/img{j}.jpg")
    (root / "black_dress" / "notes.txt").write_text("not an image")
    return names


def test_apparel_split(tmp_path: Path) -> None:
    names = make_apparel(tmp_path / "dataset" / "apparel")  # under one extra subfolder
    train = build_dataset("apparel", tmp_path, "train")
    test = build_dataset("apparel", tmp_path, "test")
    assert train.labels == list(APPAREL_LABELS) == [
        "black", "blue", "brown", "green", "red", "white", "dress", "pants", "shirt", "shoes", "shorts",
    ]  # fmt: skip
    assert len(train) + len(test) == len(names) == 20 and len(train) == 10
    together = {f"{p.parent.name}/{p.name}" for p in train.images + test.images}
    assert together == set(names) and not set(train.images) & set(test.images)
    assert (train.targets.sum(axis=1) == 2).all() and (test.targets.sum(axis=1) == 2).all()
    for d in (train, test):
        for path, row in zip(d.images, d.targets, strict=True):
            colour, garment = path.parent.name.split("_")
            assert row[APPAREL_LABELS.index(colour)] == 1 and row[APPAREL_LABELS.index(garment)] == 1
    again = build_dataset("apparel", tmp_path, "train")
    assert again.images == train.images and np.array_equal(again.targets, train.targets)
    other = build_dataset("apparel", tmp_path, "train", seed=1)
    assert other.images != train.images
    with pytest.raises(MSRNError, match="takes no option"):
        build_dataset("apparel", tmp_path, "train", colour="red")


def test_apparel_bad_folder(tmp_path: Path) -> None:
    make_apparel(tmp_path)
    (tmp_path / "purple_hat").mkdir()
    with pytest.raises(MSRNError, match=r"purple_hat: folder name is not colour_garment"):
        build_dataset("apparel", tmp_path, "train")


# ---------------------------------------------------------------- CSV


def test_csv_format(tmp_path: Path) -> None:
    text = (
        "image,labels,split\n"
        "img/a.png,cat|dog,train\n"
        '"img/with, comma.png","dog",train\n'
        "img/b.png,,train\n"
        '"img/c ""quoted"".png",zebra| cat ,test\n'
        "\n"
        "img/d.png,bird,val\n"
    )
    (tmp_path / "list.csv").write_text(text)
    d = build_dataset("csv", tmp_path / "list.csv", "train")
    assert d.labels == ["bird", "cat", "dog", "zebra"]
    assert [p.name for p in d.images] == ["a.png", "with, comma.png", "b.png"]
    assert d.images[0] == (tmp_path / "img" / "a.png").resolve()
    assert d.targets.tolist() == [[0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    t = build_dataset("csv", tmp_path / "list.csv", "test")
    assert t.images[0].name == 'c "quoted".png' and t.targets.tolist() == [[0, 1, 0, 1]]
    with pytest.raises(MSRNError, match="splits found: test, train, val"):
        build_dataset("csv", tmp_path / "list.csv", "holdout")


@pytest.mark.parametrize(
    "body, message",
    [
        ("image,labels,split\na.png,x,train\nb.png,x\n", r"list\.csv:3: expected 3 columns"),
        ("image,labels,split\na.png,x,train,extra\n", r"list\.csv:2: expected 3 columns"),
        ("image,labels,split\n,x,train\n", r"list\.csv:2: empty image path"),
        ("path,tags\na.png,x\n", r"list\.csv:1: expected the header"),
    ],
)
def test_csv_bad_lines(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "list.csv").write_text(body)
    with pytest.raises(MSRNError, match=message):
        build_dataset("csv", tmp_path / "list.csv", "train")


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MSRNError, match="file not found"):
        build_dataset("csv", tmp_path / "nope.csv", "train")
