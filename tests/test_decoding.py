"""Decoding a person's photos: EXIF orientation, wherever a photo comes in."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from msrn.checkpoint import model_state
from msrn.data import ImageDataset
from msrn.data.csvfile import read_csv_dataset
from msrn.data.transforms import TestTransform
from msrn.images import open_image
from msrn.models import create_model
from msrn.predict import load

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
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "turn 90 degrees clockwise to view"
    china.transpose(Image.Transpose.ROTATE_90).save(root / "sideways.jpg", quality=92, exif=exif)
    with Image.open(root / "sideways.jpg") as stored:
        assert stored.size == (427, 640)  # stored portrait, meant landscape
        stored.transpose(Image.Transpose.ROTATE_270).save(root / "upright.png")
    torch.manual_seed(0)
    torch.save(model_state(create_model("msrn_tiny", labels=LABELS), image_size=64), root / "model.pt")
    torch.save(model_state(create_model("msrn_tiny", labels=LABELS), image_size=64, exif_orientation=False),
               root / "raw.pt")
    return {"root": root, "sideways": root / "sideways.jpg", "upright": root / "upright.png",
            "ckpt": root / "model.pt", "raw": root / "raw.pt"}


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
