"""Decoding a person's photos: EXIF orientation wherever a photo comes in, and bombs refused from the header."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch
from image_helpers import bomb_png, sideways_jpeg
from PIL import Image

from msrn.cli import main as cli
from msrn.data import ImageDataset
from msrn.data.csvfile import read_csv_dataset
from msrn.data.transforms import TestTransform
from msrn.errors import MSRNError
from msrn.images import open_image
from msrn.inference.predictor import load
from msrn.models import create_model, model_state

datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed (its sample photo is used)")

LABELS = ["cat", "dog", "car", "tree", "sky"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """china.jpg stored sideways as a phone stores it (JPEG, EXIF orientation 6), and its upright copy.

    The upright copy is the sideways file's own pixels turned losslessly and kept as PNG, so the two
    hold exactly the same picture; the JPEG's recompression plays no part.
    """
    root = tmp_path_factory.mktemp("photos")
    china = Image.fromarray(datasets.load_sample_image("china.jpg"))
    (root / "sideways.jpg").write_bytes(sideways_jpeg(china))
    with Image.open(root / "sideways.jpg") as stored:
        assert stored.size == (427, 640)  # stored portrait, meant landscape
        stored.transpose(Image.Transpose.ROTATE_270).save(root / "upright.png")
    torch.manual_seed(0)
    torch.save(model_state(create_model("msrn_tiny", labels=LABELS), image_size=64), root / "model.pt")
    torch.save(
        model_state(create_model("msrn_tiny", labels=LABELS), image_size=64, exif_orientation=False), root / "raw.pt"
    )
    return {
        "root": root,
        "sideways": root / "sideways.jpg",
        "upright": root / "upright.png",
        "ckpt": root / "model.pt",
        "raw": root / "raw.pt",
    }


def test_sideways_photo_decodes_upright(photos: dict) -> None:
    upright = np.asarray(open_image(photos["upright"]))
    assert upright.shape == (427, 640, 3)
    np.testing.assert_array_equal(np.asarray(open_image(photos["sideways"], exif_orientation=True)), upright)
    assert open_image(photos["sideways"]).size == (427, 640)  # off: the stored pixels, as the reference reads them


def test_rotated_photo_is_tagged_like_its_upright_copy(photos: dict) -> None:
    predictor = load(photos["ckpt"])
    assert predictor.exif_orientation  # the checkpoint records that training decoded upright
    probs = predictor.probabilities([photos["sideways"], photos["upright"]])
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    with Image.open(photos["sideways"]) as pil:  # an opened PIL image carries its EXIF too
        np.testing.assert_allclose(predictor.probabilities(pil)[0], probs[1], atol=1e-6)
    raw = load(photos["ckpt"], exif_orientation=False).probabilities([photos["sideways"], photos["upright"]])
    assert np.abs(raw[0] - raw[1]).max() > 1e-4  # the stored pixels are another picture to the model


def test_checkpoint_records_the_decoding_and_an_option_overrides_it(photos: dict) -> None:
    assert not load(photos["raw"]).exif_orientation
    assert load(photos["raw"], exif_orientation=True).exif_orientation
    record = torch.load(photos["raw"], weights_only=True)
    del record["exif_orientation"]  # a checkpoint written before the field existed
    torch.save(record, photos["root"] / "old.pt")
    assert load(photos["root"] / "old.pt").exif_orientation


def test_explanation_overlays_are_upright(photos: dict) -> None:
    (expl,) = load(photos["ckpt"]).explain(photos["sideways"], k=1)
    assert expl.image.size == (640, 427)


def test_csv_reader_decodes_user_photos_upright(photos: dict) -> None:
    csv = photos["root"] / "data.csv"
    csv.write_text("image,labels,split\nsideways.jpg,cat,train\nupright.png,dog,train\n")
    data = read_csv_dataset(csv, "train")
    assert data.exif_orientation
    dataset = ImageDataset(data, TestTransform(64))
    torch.testing.assert_close(dataset[0][0], dataset[1][0], rtol=0, atol=0)


def allocated_while(action) -> tuple[object, int, int]:
    """Run action(); return its result (or MSRNError), the bytes Pillow's image memory allocated and
    Python's peak allocation during it (tracemalloc)."""
    block = Image.core.get_block_size()
    blocks = Image.core.get_stats()["allocated_blocks"]
    tracemalloc.start()
    try:
        result = action()
    except MSRNError as e:
        result = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, (Image.core.get_stats()["allocated_blocks"] - blocks) * block, peak


def test_bomb_is_refused_from_its_header_without_a_large_allocation() -> None:
    bomb = bomb_png(6000, 6000)  # 36 megapixels: 36 MB grey, 144 MB as RGB once decoded
    assert len(bomb) < 100_000
    refused, pillow_bytes, python_peak = allocated_while(lambda: open_image(bomb, "bomb.png", max_pixels=10**7))
    assert str(refused) == (
        "bomb.png: image is 6000x6000 (36.0 megapixels), more than the limit of 10 megapixels (--max-megapixels)"
    )
    assert pillow_bytes == 0 and python_peak < 2_000_000
    # without a limit of ours the same file does cost its pixels, so the measurement can tell
    decoded, pillow_bytes, _ = allocated_while(lambda: open_image(bomb).size)
    assert decoded == (6000, 6000) and pillow_bytes > 100_000_000


def test_bomb_gets_one_line_in_predict(tmp_path, capsys: pytest.CaptureFixture, photos: dict) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(6000, 6000))
    assert (
        cli(
            [
                "predict",
                "--checkpoint",
                str(photos["ckpt"]),
                str(bomb),
                str(photos["upright"]),
                "--max-megapixels",
                "10",
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert "more than the limit of 10 megapixels" in records[0]["error"] and records[1]["labels"] is not None
    lines = captured.err.strip().splitlines()
    assert (
        lines[0] == f"msrn predict: {bomb}: image is 6000x6000 (36.0 megapixels), more than the limit of "
        "10 megapixels (--max-megapixels)"
    )
    assert len(lines) == 2 and lines[1] == "msrn predict: 1 of 2 images could not be read"
    with pytest.raises(MSRNError, match="more than the limit of 1 megapixels"):
        load(photos["ckpt"], max_pixels=1_000_000).probabilities(bomb)
