"""msrn predict and the Predictor API: records, thresholds, top-k, batching, formats, bad input."""

from __future__ import annotations

import csv
import io
import json
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorms, reference_names
from PIL import Image

import msrn
from msrn.cli import main as cli
from msrn.data.transforms import TestTransform
from msrn.errors import MSRNError
from msrn.inference.predictor import Predictor, load
from msrn.inference.tagging import array_to_image
from msrn.models import create_model, model_state

LABELS = ["cat", "dog", "car", "tree", "sky"]


def _image(seed: int, size: tuple[int, int] = (90, 70)) -> Image.Image:
    """A small random RGB picture."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny MSRN checkpoint, a baseline one, and a folder of images (with a broken one)."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = create_model("msrn_tiny", labels=LABELS).eval()
    torch.save(model_state(model, image_size=64), root / "msrn.pt")
    state = model_state(model, image_size=64)
    state["thresholds"] = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])
    torch.save(state, root / "thresholds.pt")
    baseline = create_model("baseline_tiny", labels=["a", "b"]).eval()
    torch.save(model_state(baseline, image_size=64), root / "baseline.pt")
    folder = root / "images"
    (folder / "nested").mkdir(parents=True)
    for i in range(3):
        _image(i).save(folder / f"img{i}.png")
    _image(7).save(folder / "nested" / "img0.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return {
        "root": root,
        "model": model,
        "ckpt": root / "msrn.pt",
        "thr": root / "thresholds.pt",
        "baseline": root / "baseline.pt",
        "folder": folder,
    }


def test_records_are_sorted_thresholded_and_match_the_model(files: dict) -> None:
    predictor = load(files["ckpt"])
    img = _image(0)
    expected = torch.sigmoid(files["model"](TestTransform(64)(img)[None]))[0].detach().numpy()
    np.testing.assert_allclose(predictor.probabilities(img)[0], expected, atol=1e-6)
    (everything,) = predictor.predict(img, threshold=0.0)
    assert everything["image"] is None
    assert [x["label"] for x in everything["labels"]] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]
    scores = [x["score"] for x in everything["labels"]]
    assert scores == sorted(scores, reverse=True)
    (default,) = predictor.predict(img)
    assert all(x["score"] >= 0.5 for x in default["labels"])
    assert len(default["labels"]) == int((expected >= 0.5).sum())
    (top2,) = predictor.predict(img, threshold=0.0, top_k=2)
    assert top2["labels"] == everything["labels"][:2]
    (none,) = predictor.predict(img, threshold=1.0)
    assert none["labels"] == []


def test_paths_pil_and_arrays_agree_and_batching_keeps_order(files: dict) -> None:
    folder = files["folder"]
    one = Predictor.from_checkpoint(files["ckpt"], batch_size=1, threshold=0.0)
    many = Predictor.from_checkpoint(files["ckpt"], batch_size=3, threshold=0.0)
    paths = [folder / "img0.png", folder / "img1.png", folder / "img2.png"]
    by_path = many.predict(paths)
    assert [r["image"] for r in by_path] == [str(p) for p in paths]
    assert [r["labels"] for r in one.predict(paths)] == [r["labels"] for r in by_path]
    arrays = [np.asarray(Image.open(p)) for p in paths]
    assert [r["labels"] for r in many.predict(arrays)] == [r["labels"] for r in by_path]
    assert many.predict([Image.open(p) for p in paths])[1]["labels"] == by_path[1]["labels"]
    floats = many.predict(arrays[0].astype(np.float32) / 255)[0]["labels"]
    assert [x["label"] for x in floats] == [x["label"] for x in by_path[0]["labels"]]


def test_folder_input_walks_and_reports_unreadable_images(files: dict) -> None:
    records = load(files["ckpt"], batch_size=2).predict(files["folder"])
    names = [r["image"].removeprefix(str(files["folder"]) + "/") for r in records]
    assert names == ["broken.jpg", "img0.png", "img1.png", "img2.png", "nested/img0.jpg"]  # notes.txt skipped
    assert "cannot decode" in records[0]["error"] and records[0]["labels"] == []
    assert all("error" not in r for r in records[1:])


def test_checkpoint_thresholds_are_the_default(files: dict) -> None:
    predictor = load(files["thr"])
    np.testing.assert_array_equal(predictor.thresholds, [0, 1, 1, 1, 1])
    assert [x["label"] for x in predictor.predict(_image(3))[0]["labels"]] == ["cat"]
    assert len(load(files["thr"], threshold=0.0).predict(_image(3))[0]["labels"]) == 5


def test_array_checks() -> None:
    assert array_to_image(np.zeros((4, 5), np.uint8)).size == (5, 4)
    assert array_to_image(np.zeros((4, 5, 4), np.uint8)).mode == "RGB"
    with pytest.raises(MSRNError, match="H x W"):
        array_to_image(np.zeros((2, 4, 5, 3)))


def test_threshold_vectors_are_checked(files: dict) -> None:
    model = files["model"]
    assert Predictor(model, threshold=[0.1, 0.2, 0.3, 0.4, 0.5]).thresholds[2] == pytest.approx(0.3)
    with pytest.raises(MSRNError, match="3 thresholds for 5 labels"):
        Predictor(model, threshold=[0.1, 0.2, 0.3])
    with pytest.raises(MSRNError, match=r"\[0, 1\]"):
        Predictor(model, threshold=1.5)


def test_cli_json_stdout_with_errors(files: dict, capsys: pytest.CaptureFixture) -> None:
    rc = cli(["predict", "--checkpoint", str(files["ckpt"]), str(files["folder"]), "--threshold", "0", "--top-k", "2"])
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert rc == 1 and len(records) == 5
    assert records[0]["error"] and "broken.jpg" in err and "1 of 5" in err
    assert all(len(r["labels"]) == 2 for r in records[1:])
    assert set(records[1]) == {"image", "labels"} and set(records[1]["labels"][0]) == {"label", "score"}


def test_cli_csv_to_file(files: dict, tmp_path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tags.csv"
    image = files["folder"] / "img0.png"
    assert (
        cli(
            [
                "predict",
                "--checkpoint",
                str(files["ckpt"]),
                str(image),
                "--format",
                "csv",
                "--threshold",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["image"] for r in rows] == [str(image)] * 5 and rows[0]["error"] == ""
    assert float(rows[0]["score"]) >= float(rows[-1]["score"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "folder holds no images"),
        ("not_checkpoint", "checkpoint"),
        ("other_kind", "neither an msrn checkpoint"),
        ("missing", "does not exist"),
        ("baseline_explain", "baseline without label-guided attention"),
        ("bad_top_k", "--top-k"),
    ],
)
def test_cli_bad_input_is_one_line(
    case: str, message: str, files: dict, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    root, image = files["root"], str(files["folder"] / "img0.png")
    other = tmp_path / "optimizer.pt"
    torch.save({"step": torch.tensor(3), "exp_avg": torch.zeros(3)}, other)
    args = {
        "empty": ["--checkpoint", str(files["ckpt"]), str(root / "empty")],
        "not_checkpoint": ["--checkpoint", image, image],
        "other_kind": ["--checkpoint", str(other), image],
        "missing": ["--checkpoint", str(tmp_path / "nope.pt"), image],
        "baseline_explain": ["--checkpoint", str(files["baseline"]), image, "--explain", str(tmp_path / "x")],
        "bad_top_k": ["--checkpoint", str(files["ckpt"]), image, "--top-k", "0"],
    }[case]
    assert cli(["predict", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msrn predict: error:") and message in lines[0]


def test_baseline_checkpoint_predicts(files: dict) -> None:
    (record,) = load(files["baseline"]).predict(_image(1), threshold=0.0)
    assert [x["label"] for x in record["labels"]] in (["a", "b"], ["b", "a"])


def _reference_files(root) -> tuple:
    """A reference-format checkpoint (resnet50 backbone, 3 labels) and its two pickles."""
    torch.manual_seed(1)
    labels = ["person", "bike", "car"]
    vectors = np.random.default_rng(0).standard_normal((3, 300)).astype(np.float32)
    co = {"adj": np.array([[0, 5, 1], [5, 0, 0], [1, 0, 0]]), "nums": np.array([10, 6, 8])}
    model = create_model("msrn_resnet50", labels=labels, num_groups=1, word_vectors=vectors, cooccurrence=co).eval()
    state = {}
    for key, value in reference_names(model.state_dict()).items():
        if key in ("word_vectors", "adjacency"):
            continue
        state[
            key.replace("backbone.", "resnet_101.", 1)
            if key.startswith("backbone.")
            else "resnet_101." + key
            if key.startswith("conv_buffer")
            else key
        ] = value
    ckpt = root / "reference.pth.tar"
    torch.save({"epoch": 1, "arch": "msrn", "state_dict": state, "best_score": 0.0}, ckpt)
    (root / "vectors.pkl").write_bytes(pickle.dumps(vectors))
    (root / "adj.pkl").write_bytes(pickle.dumps(co))
    return model, ckpt, root / "vectors.pkl", root / "adj.pkl"


def test_reference_checkpoint_with_its_pickles(tmp_path, capsys: pytest.CaptureFixture) -> None:
    model, ckpt, vectors, adj = _reference_files(tmp_path)
    image = tmp_path / "x.png"
    _image(5, (64, 64)).save(image)
    (tmp_path / "labels.txt").write_text("person\nbike\ncar\n")
    assert cli(["predict", "--checkpoint", str(ckpt), str(image)]) == 2
    assert "--word-vectors" in capsys.readouterr().err
    rc = cli(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--word-vectors",
            str(vectors),
            "--cooccurrence",
            str(adj),
            "--labels",
            str(tmp_path / "labels.txt"),
            "--image-size",
            "64",
            str(image),
            "--threshold",
            "0",
        ]
    )
    assert rc == 0
    (record,) = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        expected = torch.sigmoid(model(TestTransform(64)(Image.open(image))[None]))[0]
    got = {r["label"]: r["score"] for r in record["labels"]}
    np.testing.assert_allclose([got[n] for n in ["person", "bike", "car"]], expected.numpy(), atol=1e-5)


def test_fast_predictor_folds_batch_norm_and_keeps_scores_and_explanations(tmp_path, capsys) -> None:
    torch.manual_seed(3)
    model = create_model("msrn_tiny", labels=LABELS)
    randomise_batchnorms(model, seed=3)
    ckpt = tmp_path / "m.pt"
    torch.save(model_state(model.eval(), image_size=64), ckpt)
    images = [_image(i) for i in range(3)]
    plain, fast = load(ckpt, threshold=0.0, fast=False), load(ckpt, threshold=0.0)  # fast: the default
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.model.modules())
    assert fast.labels == LABELS and fast.image_size == 64
    expected = plain.probabilities(images)
    np.testing.assert_allclose(fast.probabilities(images), expected, rtol=1e-5, atol=1e-6)
    (explained,) = fast.explain(images[0], k=2)
    assert explained.labels == [LABELS[i] for i in np.argsort(-expected[0], kind="stable")[:2]]
    assert explained.scores == pytest.approx(np.sort(expected[0])[::-1][:2], abs=1e-5)
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for img, path in zip(images, paths):
        img.save(path)
    for flags in ([], ["--fast"], ["--exact"]):  # --fast, once an option, does nothing and says it is deprecated
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cli(["predict", "--checkpoint", str(ckpt), *flags, "--threshold", "0", *map(str, paths)]) == 0
        deprecated = [w for w in caught if w.category is FutureWarning and "--fast is deprecated" in str(w.message)]
        assert len(deprecated) == (flags == ["--fast"])
        records = json.loads(capsys.readouterr().out)
        got = np.array(
            [[x["score"] for x in sorted(r["labels"], key=lambda x: LABELS.index(x["label"]))] for r in records]
        )
        np.testing.assert_allclose(got, expected, atol=2e-6 if flags != ["--exact"] else 1e-6)
    with pytest.raises(SystemExit), pytest.warns(FutureWarning):  # one or the other
        cli(["predict", "--checkpoint", str(ckpt), "--fast", "--exact", str(paths[0])])


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"msrn {msrn.__version__}"


def test_list_file_and_progress_bar(
    files: dict, tmp_path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = files["folder"]
    monkeypatch.chdir(folder)
    listing = tmp_path / "list.txt"
    listing.write_text(f"img1.png\n\n{folder / 'img0.png'}\n  nested/img0.jpg  \n")
    assert cli(["predict", "--checkpoint", str(files["ckpt"]), "--list", str(listing), "img2.png"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == ["img2.png", "img1.png", str(folder / "img0.png"), "nested/img0.jpg"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("img1.png\n"))
    assert cli(["predict", "--checkpoint", str(files["ckpt"]), "--list", "-"]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == ["img1.png"]
    assert cli(["predict", "--checkpoint", str(files["ckpt"]), "--list", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read the image list" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal: bars are shown
    long = tmp_path / "long.txt"
    long.write_text("img0.png\n" * 40)
    assert cli(["predict", "--checkpoint", str(files["ckpt"]), "--list", str(long), "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 40 and "predict:" in captured.err and "/40" in captured.err
    assert cli(["predict", "--checkpoint", str(files["ckpt"]), "img0.png", "img1.png"]) == 0
    assert capsys.readouterr().err == ""  # a short list: no bar
