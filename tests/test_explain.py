"""Per-label, per-depth attention maps: their definition, shapes, the pictures and `--explain`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import msrn.inference
from msrn.cli import main as cli
from msrn.demo import pick_images
from msrn.errors import MSRNError
from msrn.inference.draw import figure, overlay, panel_size, save_explanation
from msrn.inference.explain import (
    Explanation,
    attention_maps,
    explained_forward,
    label_map_difference,
    picture_notes,
)
from msrn.inference.predictor import load
from msrn.models import create_model, model_state

LABELS = ["cat", "dog", "car", "tree", "sky", "boat"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A tiny MSRN with random weights."""
    torch.manual_seed(0)
    return create_model("msrn_tiny", labels=LABELS).eval()


def _brute_force_maps(model: torch.nn.Module, x: torch.Tensor, ids: list[int]) -> list[torch.Tensor]:
    """The design's alpha materialised for all labels, then summarised as the docstring says."""
    local = model.semantics().local
    out = []
    for f in (m.flatten(2) for m in model.projected_maps(x)):  # B x D x N
        ft = f.transpose(1, 2)  # B x N x D
        alpha = torch.softmax(ft[:, :, None, :] * local[None, None], dim=1)  # B x N x C x D
        m = (alpha * ft.abs()[:, :, None, :]).sum(-1)  # B x N x C
        m = m / m.sum(1, keepdim=True)
        out.append(m[:, :, ids].transpose(1, 2))  # B x k x N
    return out


@torch.no_grad()
def test_maps_follow_the_definition_and_sizes(model: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 96, 80)
    maps = attention_maps(model, x, [4, 1])
    expected = _brute_force_maps(model, x, [4, 1])
    feats = [m.flatten(2) for m in model.projected_maps(x)]
    assert len(maps) == 3
    for m, e, f in zip(maps, expected, feats, strict=True):
        assert m.shape[:2] == (2, 2) and m.shape[2] * m.shape[3] == f.shape[2]
        torch.testing.assert_close(m.flatten(2), e, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(m.sum((2, 3)), torch.ones(2, 2))
        assert (m >= 0).all()
    assert maps[0].shape[2:] == (6, 5)  # 96x80 input: layer2 at stride 8, then the 2x2 pool
    assert maps[0].shape[2] > maps[1].shape[2]  # finer grid at the first depth


@torch.no_grad()
def test_per_image_labels_and_one_pass_forward(model: torch.nn.Module) -> None:
    x = torch.randn(3, 3, 64, 64)
    logits, idx, maps = explained_forward(model, x, 2)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(idx, model(x).topk(2, dim=1).indices)
    for b in range(3):
        single = attention_maps(model, x[b : b + 1], idx[b].tolist())
        for m, s in zip(maps, single, strict=True):
            torch.testing.assert_close(m[b], s[0])
    labels_differ = attention_maps(model, x[:1], [0, 5])[0]
    assert not torch.allclose(labels_differ[0, 0], labels_differ[0, 1])  # maps are label-specific


def test_bad_label_indices_and_baselines(model: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(MSRNError, match="0..5"):
        attention_maps(model, x, [6])
    with pytest.raises(MSRNError, match="baseline"):
        attention_maps(create_model("baseline_tiny", labels=["a"]).eval(), x, [0])


def test_overlay_keeps_aspect_and_marks_the_peak() -> None:
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    heat = np.zeros((2, 2), np.float32)
    heat[0, 1] = 1.0
    out = overlay(image, heat, side=128)
    assert out.size == panel_size(image, 128) == (128, 64)
    arr = np.asarray(out, dtype=np.float32)
    assert arr[:16, -16:].mean() > arr[-16:, :16].mean() + 30  # hot corner is brighter than the cold one
    flat = np.asarray(overlay(image, np.full((1, 1), 1.0, np.float32), side=64), dtype=np.float32)
    assert flat.std(axis=(0, 1)).max() < 1  # one position: uniformly lit, no artefacts


def test_explain_cli_writes_one_figure_per_image(
    model: torch.nn.Module, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "m.pt"
    torch.save(model_state(model, image_size=64), ckpt)
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / folder / "photo.png")
    out = tmp_path / "explain"
    rc = cli(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--explain",
            str(out),
            "--explain-labels",
            "2",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo-2.png", "photo.png"]
    with Image.open(out / "photo.png") as fig:
        assert fig.width > 600 and fig.height > 300
    assert '"explanation"' in capsys.readouterr().out


def test_explanations_from_the_api(model: torch.nn.Module, tmp_path) -> None:
    ckpt = tmp_path / "m.pt"
    torch.save(model_state(model, image_size=64), ckpt)
    (expl,) = load(ckpt).explain(Image.new("RGB", (40, 60), (10, 200, 30)), k=4)
    assert len(expl.labels) == 4 and expl.scores == sorted(expl.scores, reverse=True)
    assert [m.shape[0] for m in expl.maps] == [4, 4, 4]
    assert expl.depth_titles()[0].startswith("depth 1")
    save_explanation(expl, tmp_path / "fig.png")
    assert Image.open(tmp_path / "fig.png").format == "PNG"


def test_no_text_promises_three_depths() -> None:
    """Since --depths a model may read one or two depths; explain, predict, serve and the page say
    'each depth the model reads' instead of 'three depths'."""
    folder = Path(msrn.inference.__file__).parent
    for name in ("explain.py", "draw.py", "predict.py", "serve.py", "static/index.html"):
        assert "three depths" not in (folder / name).read_text(), name


def test_demo_picks_pictures_that_teach() -> None:
    """The demo showed the first test images found, whatever the models did on them (its first picture,
    on a fresh clone, showed three labels absent from the image). Now: where MSRN beats the baseline
    most, then where MSRN fails most, each captioned so."""
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=bool)
    msrn = np.array([[0.9, 0.1, 0.1], [0.2, 0.8, 0.1], [0.1, 0.1, 0.9], [0.1, 0.2, 0.9], [0.8, 0.1, 0.7]])
    base = np.array([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1], [0.5, 0.5, 0.5], [0.1, 0.3, 0.4], [0.2, 0.5, 0.2]])
    picks = pick_images(truth, msrn, base, count=3)
    # gains (baseline error - MSRN error): 0, 1.4, -1.2, 0.6, 1.5; MSRN's worst image is 2 (error 2.7)
    assert [i for i, _ in picks] == [4, 1, 2]
    assert all("beats the baseline most" in c for _, c in picks[:2]) and "fails most" in picks[2][1]
    assert "2.70" in picks[2][1] and "1.50" in picks[2][1]  # MSRN's error there, and the baseline's
    alone = pick_images(truth, msrn, None, count=2)
    assert [i for i, _ in alone] == [0, 2] and "fails most" in alone[1][1]


def test_pictures_say_when_labels_maps_are_alike() -> None:
    same = np.full((3, 4, 4), 1 / 16)
    expl = Explanation(image=Image.new("RGB", (8, 8)), name="x", labels=["a", "b", "c"], scores=[0.9, 0.8, 0.7],
                       maps=[same, same[:, :2, :2] * 4], depths=(1, 3), caption="Where MSRN fails most")  # fmt: skip
    notes = picture_notes(expl)
    assert notes[0] == "Where MSRN fails most" and "alike" in notes[1] and "0.0%" in notes[1]
    apart = same.copy()
    apart[0] = 0
    apart[0, 0, 0] = 1  # label a looked at one corner only
    expl.maps = [apart, same[:, :2, :2] * 4]
    assert label_map_difference(expl.maps) == pytest.approx(15 / 16)
    assert picture_notes(expl) == ["Where MSRN fails most"]
    fig = figure(expl)
    assert "Where MSRN fails most" in fig.get_suptitle()
