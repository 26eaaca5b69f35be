"""COCO and Apparel read as the reference reads them: COCO's alphabetical label order and annotated image
set, Apparel's split from image_label.pkl checked against the reference's rule written again here, both
Apparel folder layouts, the reader options on every command, and `msrn inspect --json --images`."""

from __future__ import annotations

import json
import pickle
import random
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from msrn.cli import build_parser
from msrn.cli import main as cli_main
from msrn.data import build_dataset, reader_options
from msrn.data.apparel import APPAREL_LABELS
from msrn.engine.config import TrainConfig, config_from_args
from msrn.errors import MSRNError
from msrn.labels.labelset import label_vectors
from msrn.safe_pickle import load_numpy_pickle

# ---------------------------------------------------------------- COCO 2014

# the 80 COCO 2014 categories as instances_*.json lists them: (category id, name), in id order
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]  # fmt: skip


def write_coco(root: Path, split: str, doc: dict) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2014").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))


def reference_coco(doc: dict) -> tuple[list[str], list[str], list[list[int]]]:
    """The reference's COCO reading, written again: names sorted, images in file order, unannotated skipped."""
    names = sorted(c["name"] for c in doc["categories"])
    name_of = {c["id"]: c["name"] for c in doc["categories"]}
    present: dict[int, set[int]] = {}
    for a in doc["annotations"]:
        present.setdefault(a["image_id"], set()).add(names.index(name_of[a["category_id"]]))
    files, rows = [], []
    for image in doc["images"]:
        if image["id"] in present:
            files.append(image["file_name"])
            rows.append([int(k in present[image["id"]]) for k in range(len(names))])
    return names, files, rows


def random_coco(seed: int) -> dict:
    """A small instances json: shuffled categories whose id order is not their name order, some images
    without annotations, repeated annotations."""
    rng = np.random.RandomState(seed)
    picked = [COCO_CATEGORIES[k] for k in rng.choice(len(COCO_CATEGORIES), 12, replace=False)]
    images = [{"id": int(i), "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in rng.permutation(1000)[:30]]
    annotations = [
        {"image_id": images[k]["id"], "category_id": picked[rng.randint(len(picked))][0]}
        for k in rng.randint(0, 22, size=60)  # the last 8 images and some others get no annotation
    ]
    return {"images": images, "categories": [{"id": i, "name": n} for i, n in picked], "annotations": annotations}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_matches_reference_reading(tmp_path: Path, seed: int) -> None:
    doc = random_coco(seed)
    write_coco(tmp_path, "val", doc)
    names, files, rows = reference_coco(doc)
    d = build_dataset("coco2014", tmp_path, "val")
    assert [n for _, n in sorted((c["id"], c["name"]) for c in doc["categories"])] != names  # the fixture bites
    assert d.labels == names
    assert [p.name for p in d.images] == files and len(files) < len(doc["images"])
    assert d.targets.tolist() == rows
    assert all(p.parent == (tmp_path / "val2014").resolve() for p in d.images)
    assert "left out" in d.note


def test_coco_keep_unannotated(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": 42, "file_name": "a.jpg"}, {"id": 7, "file_name": "b.jpg"}, {"id": 9, "file_name": "c.jpg"}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [{"image_id": 42, "category_id": 90}, {"image_id": 42, "category_id": 1},
                        {"image_id": 42, "category_id": 1}, {"image_id": 9, "category_id": 3}],
    }  # fmt: skip
    write_coco(tmp_path, "val", doc)
    left_out = build_dataset("coco2014", tmp_path, "val")
    assert left_out.labels == ["car", "person", "toothbrush"]
    assert [p.name for p in left_out.images] == ["a.jpg", "c.jpg"]
    assert left_out.targets.tolist() == [[0, 1, 1], [1, 0, 0]]
    kept = build_dataset("coco2014", tmp_path, "val", keep_unannotated=True)
    assert [p.name for p in kept.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert kept.targets.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert "kept" in kept.note and kept.note != left_out.note


def test_coco_80_labels_in_reference_order(tmp_path: Path) -> None:
    shuffled = [COCO_CATEGORIES[k] for k in np.random.RandomState(0).permutation(80)]
    write_coco(tmp_path, "train", {"images": [{"id": 1, "file_name": "x.jpg"}],
                                   "categories": [{"id": i, "name": n} for i, n in shuffled],
                                   "annotations": [{"image_id": 1, "category_id": 1}]})  # fmt: skip
    d = build_dataset("coco2014", tmp_path, "train")
    assert d.labels[:3] == ["airplane", "apple", "backpack"] and d.labels[-1] == "zebra"
    assert d.labels.index("person") == 49  # the reference's pickles and checkpoint put person at 49
    assert d.targets.tolist() == [[int(k == 49) for k in range(80)]]


# ---------------------------------------------------------------- Apparel with image_label.pkl

PAIRS = [("black", "dress"), ("blue", "pants"), ("red", "shoes"), ("white", "shorts"), ("green", "shirt"),
         ("brown", "shoes")]  # fmt: skip


def reference_rule(table: dict) -> tuple[list, list]:
    """The reference's split_dataset written again: the dict's items, global random.seed(10) and
    random.shuffle, the first int(n * 0.5) trainval (the global state is restored afterwards)."""
    state = random.getstate()
    try:
        items = list(table.items())
        random.seed(10)
        random.shuffle(items)
    finally:
        random.setstate(state)
    cut = int(len(items) * 0.5)
    return items[:cut], items[cut:]


def make_table(n: int = 21, seed: int = 0) -> dict[str, list[int]]:
    """An image_label.pkl dict: hashed-looking names in no sorted order, 0 = present, -1 = absent."""
    rng = np.random.RandomState(seed)
    table = {}
    for k in range(n):
        colour, garment = PAIRS[k % len(PAIRS)]
        row = [-1] * len(APPAREL_LABELS)
        row[APPAREL_LABELS.index(colour)] = row[APPAREL_LABELS.index(garment)] = 0
        table[f"{rng.randint(16**8):08x}{k:02d}.jpg"] = row
    return table


def write_pickle(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def folder_of(row: list[int]) -> str:
    colour, garment = (APPAREL_LABELS[k] for k, v in enumerate(row) if v == 0)
    return f"{colour}_{garment}"


def place_images(root: Path, table: dict[str, list[int]], layout: str) -> dict[str, str]:
    """Empty image files in one layout; returns name -> path relative to root."""
    where = {}
    for name, row in table.items():
        rel = {"apparel": f"apparel/{name}", "flat": name, "kaggle": f"kaggle/{folder_of(row)}/{name}"}[layout]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
        where[name] = rel
    return where


def expected_rows(items: list) -> list[list[int]]:
    return [[int(v == 0) for v in row] for _, row in items]


@pytest.mark.parametrize("layout", ["apparel", "flat", "kaggle"])
def test_apparel_reference_split_and_layouts(tmp_path: Path, layout: str) -> None:
    table = make_table()
    root = tmp_path / "data"
    where = place_images(root, table, layout)
    # the reference keeps the pickle beside the images in data/apparel/; the data folder itself works too
    write_pickle(root / ("apparel" if layout == "apparel" else ".") / "image_label.pkl", table)
    random.seed(123)
    state = random.getstate()
    train = build_dataset("apparel", root, "train")
    test = build_dataset("apparel", root, "test")
    assert random.getstate() == state  # the global random state is left alone
    ref_train, ref_test = reference_rule(table)
    assert (len(train), len(test)) == (10, 11)  # int(21 * 0.5) train, unlike the seeded split's 11
    for d, items in ((train, ref_train), (test, ref_test)):
        assert [p.name for p in d.images] == [name for name, _ in items]  # the reference's order too
        assert [p.relative_to(d.root).as_posix() for p in d.images] == [where[name] for name, _ in items]
        assert d.targets.tolist() == expected_rows(items)
        assert d.labels == list(APPAREL_LABELS) and "reference's split" in d.note


def test_apparel_split_follows_stored_order_and_option(tmp_path: Path) -> None:
    table = make_table(n=30, seed=1)
    place_images(tmp_path, table, "flat")
    elsewhere = write_pickle(tmp_path / "elsewhere" / "labels.pkl", table)
    named = build_dataset("apparel", tmp_path, "train", apparel_labels=str(elsewhere))
    assert [p.name for p in named.images] == [name for name, _ in reference_rule(table)[0]]
    reordered = dict(reversed(list(table.items())))  # same content, another insertion order
    write_pickle(tmp_path / "image_label.pkl", reordered)
    found = build_dataset("apparel", tmp_path, "train")
    assert [p.name for p in found.images] == [name for name, _ in reference_rule(reordered)[0]]
    assert set(found.images) != set(named.images)
    assert build_dataset("apparel", tmp_path, "train", apparel_labels=elsewhere).images == named.images
    with pytest.raises(MSRNError, match=r"nothing\.pkl: file not found"):
        build_dataset("apparel", tmp_path, "train", apparel_labels=tmp_path / "nothing.pkl")


def test_apparel_kaggle_name_in_two_folders(tmp_path: Path) -> None:
    table = make_table(n=6)
    place_images(tmp_path, table, "kaggle")
    name, row = next(iter(table.items()))
    decoy = tmp_path / "kaggle" / "red_shoes" / name  # same file name under labels the pickle does not give
    decoy.touch()
    write_pickle(tmp_path / "image_label.pkl", table)
    both = build_dataset("apparel", tmp_path, "train").images + build_dataset("apparel", tmp_path, "test").images
    (chosen,) = [p for p in both if p.name == name]
    assert chosen.parent.name == folder_of(row) != "red_shoes"


def test_apparel_missing_image_is_one_line(tmp_path: Path) -> None:
    table = make_table()
    place_images(tmp_path, table, "flat")
    write_pickle(tmp_path / "image_label.pkl", table)
    gone = reference_rule(table)[1][3][0]
    (tmp_path / gone).unlink()
    build_dataset("apparel", tmp_path, "train")  # the other half does not need it
    with pytest.raises(MSRNError, match=rf"1 of the 11 images image_label\.pkl lists .* not found, first {gone}"):
        build_dataset("apparel", tmp_path, "test")


@pytest.mark.parametrize(
    "entry, message",
    [
        (("a.jpg", [1] + [-1] * 10), r"0 \(present\) or -1 \(absent\)"),
        (("a.jpg", [0, 0]), "11 values"),
        (("../a.jpg", [0] + [-1] * 10), "plain file name"),
        (("a.jpg", [Fraction(0)] + [-1] * 10), "refusing to load"),  # only the restricted unpickler reads it
    ],
)
def test_apparel_bad_label_file(tmp_path: Path, entry: tuple, message: str) -> None:
    write_pickle(tmp_path / "image_label.pkl", dict([entry]))
    with pytest.raises(MSRNError, match=message):
        build_dataset("apparel", tmp_path, "train")


@pytest.mark.parametrize("content", [[["a.jpg", [0] * 11]], {}])
def test_apparel_label_file_not_a_dict(tmp_path: Path, content: object) -> None:
    write_pickle(tmp_path / "image_label.pkl", content)
    with pytest.raises(MSRNError, match="expected a non-empty dict"):
        build_dataset("apparel", tmp_path, "train")


def test_apparel_without_label_file_says_seeded(tmp_path: Path) -> None:
    table = make_table(n=7)
    place_images(tmp_path, table, "kaggle")
    train = build_dataset("apparel", tmp_path, "train")
    assert len(train) == 4 and "seeded split" in train.note and "not the reference's" in train.note


def test_apparel_real_label_file(tmp_path: Path, reference_data: Path) -> None:
    source = reference_data / "apparel" / "image_label.pkl"
    table = load_numpy_pickle(source)  # a dict in the stored order
    (tmp_path / "apparel").mkdir()
    for name in table:
        (tmp_path / "apparel" / name).touch()
    ref_train, ref_test = reference_rule(table)
    train = build_dataset("apparel", tmp_path, "train", apparel_labels=source)
    test = build_dataset("apparel", tmp_path, "test", apparel_labels=source)
    assert (len(train), len(test)) == (int(len(table) * 0.5), len(table) - int(len(table) * 0.5))
    assert [p.name for p in train.images] == [name for name, _ in ref_train]
    assert [p.name for p in test.images] == [name for name, _ in ref_test]
    assert train.targets.tolist() == expected_rows(ref_train) and test.targets.tolist() == expected_rows(ref_test)
    assert (train.targets.sum(axis=1) == 2).all()


# ---------------------------------------------------------------- the options on every command, and inspect


def test_reader_options_reach_every_command(tmp_path: Path) -> None:
    assert reader_options(TrainConfig()) == {}
    cfg = TrainConfig(dataset="apparel", apparel_labels="x.pkl")
    assert reader_options(cfg) == {"apparel_labels": "x.pkl"}
    assert TrainConfig.from_dict(cfg.to_dict()).apparel_labels == "x.pkl"  # kept in config.json for resumes
    args = build_parser("train").parse_args(["train", "--dataset", "coco2014", "--data", "d", "--keep-unannotated"])
    assert reader_options(config_from_args(args)) == {"keep_unannotated": True}
    for command in (["evaluate", "--checkpoint", "c.pt"], ["inspect"]):
        argv = [*command, "--dataset", "apparel", "--data", "d", "--apparel-labels", "p.pkl"]
        args = build_parser(command[0]).parse_args(argv)
        assert reader_options(args) == {"apparel_labels": "p.pkl"}
    with pytest.raises(MSRNError, match="takes no option apparel_labels"):
        build_dataset("coco2014", tmp_path, "train", apparel_labels="p.pkl")


def run_inspect(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert cli_main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = make_table()
    where = place_images(tmp_path, table, "kaggle")
    write_pickle(tmp_path / "image_label.pkl", table)
    plain = run_inspect(capsys, "--dataset", "apparel", "--data", str(tmp_path), "--split", "test")
    assert "images" not in plain and plain["num_images"] == 11 and "reference's split" in plain["note"]
    out = run_inspect(capsys, "--dataset", "apparel", "--data", str(tmp_path), "--split", "test", "--images")
    assert {k: v for k, v in out.items() if k != "images"} == plain
    ref_test = reference_rule(table)[1]
    assert out["images"] == [
        {"path": where[name], "labels": [APPAREL_LABELS[k] for k, v in enumerate(row) if v == 0]}
        for name, row in ref_test
    ]
    assert cli_main(["inspect", "--dataset", "apparel", "--data", str(tmp_path)]) == 0
    assert "reference's split" in capsys.readouterr().out.splitlines()[1]
    assert cli_main(["inspect", "--dataset", "apparel", "--data", str(tmp_path), "--images"]) == 2
    assert "add --json" in capsys.readouterr().err


def test_inspect_coco_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = random_coco(0)
    write_coco(tmp_path, "val", doc)
    _, files, _ = reference_coco(doc)
    out = run_inspect(capsys, "--dataset", "coco2014", "--data", str(tmp_path), "--split", "val", "--images")
    assert [e["path"] for e in out["images"]] == [f"val2014/{f}" for f in files]
    kept = run_inspect(capsys, "--dataset", "coco2014", "--data", str(tmp_path), "--split", "val",
                       "--keep-unannotated")  # fmt: skip
    assert kept["num_images"] == len(doc["images"]) > out["num_images"]


def test_labels_reads_the_images_train_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`msrn labels` takes the reader options, so its graph counts the images `msrn train` counts."""
    doc = random_coco(0)
    write_coco(tmp_path, "train", doc)
    own = ["--word-vectors", "ngram", "--cooccurrence", "train", "--json"]
    base = ["labels", "--dataset", "coco2014", "--data", str(tmp_path), *own]
    assert cli_main([*base, "--out", str(tmp_path / "a" / "labels.pt")]) == 0
    left_out = json.loads(capsys.readouterr().out)
    assert cli_main([*base, "--out", str(tmp_path / "b" / "labels.pt"), "--keep-unannotated"]) == 0
    kept = json.loads(capsys.readouterr().out)
    cfg = config_from_args(build_parser("train").parse_args(
        ["train", "--dataset", "coco2014", "--data", str(tmp_path), "--keep-unannotated"]))  # fmt: skip
    assert kept["num_images"] == len(build_dataset("coco2014", tmp_path, "train", **reader_options(cfg)))
    assert kept["num_images"] == len(doc["images"]) > left_out["num_images"]


def test_vector_errors_name_a_flag_train_and_labels_have() -> None:
    """The messages named `--vectors`, which `msrn train` does not have."""
    with pytest.raises(MSRNError) as err:
        label_vectors(["a"], "ngram:wide")
    flag = re.search(r"--[a-z-]+", str(err.value)).group()
    for command in ("train", "labels"):
        argv = [command, "--dataset", "voc2007", "--data", "d", flag, "ngram"]
        args = build_parser(command).parse_args(argv)  # an unknown flag would exit here
        assert "ngram" in (getattr(args, "word_vectors", None), getattr(args, "vectors", None))
