"""Tests for msrn.plots: valid PNGs of sensible size, atomic replacement on failure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from msrn import io, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    """Assert path is a decodable PNG of reasonable size and return its (width, height)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert min_width <= width <= 20000 and min_height <= height <= 20000
    return width, height


def _history(with_optional: bool) -> list[dict]:
    """A small fake training history."""
    rows = []
    for epoch in range(1, 6):
        row = {"epoch": epoch, "train_loss": 1.0 / epoch, "mAP": 50.0 + 5 * epoch}
        if with_optional:
            row.update(test_loss=1.2 / epoch, val_mAP=48.0 + 5 * epoch)
        rows.append(row)
    return rows


@pytest.mark.parametrize("with_optional", [True, False])
def test_plot_history_writes_png(tmp_path: Path, with_optional: bool) -> None:
    target = tmp_path / "history.png"
    plots.plot_history(_history(with_optional), target)
    _check_png(target)
    assert [p.name for p in tmp_path.iterdir()] == ["history.png"]


def test_plot_history_tolerates_missing_values(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 0.9, "mAP": None}, {"epoch": 2, "train_loss": 0.7, "mAP": math.nan}]
    plots.plot_history(history, tmp_path / "h.png")
    _check_png(tmp_path / "h.png")


def test_plot_history_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history([], tmp_path / "h.png")


def test_plot_ap_per_label_writes_png(tmp_path: Path) -> None:
    target = tmp_path / "ap.png"
    labels = [f"label {i}" for i in range(12)]
    ap = [float(8 * i) for i in range(11)] + [None]
    plots.plot_ap_per_label(ap, labels, target, title="VOC test")
    _check_png(target)


def test_plot_ap_per_label_scales_with_many_labels(tmp_path: Path) -> None:
    few, many = tmp_path / "few.png", tmp_path / "many.png"
    plots.plot_ap_per_label([50.0, 60.0], ["a", "b"], few)
    plots.plot_ap_per_label([i % 100 for i in range(81)], [f"l{i}" for i in range(81)], many)
    assert _check_png(many)[1] > _check_png(few)[1]


def test_plot_ap_per_label_all_without_positives(tmp_path: Path) -> None:
    plots.plot_ap_per_label([None, None], ["a", "b"], tmp_path / "ap.png")
    _check_png(tmp_path / "ap.png")


@pytest.mark.parametrize(
    ("ap", "labels", "message"),
    [
        ([50.0], ["a", "b"], "1 AP values for 2 labels"),
        ([], [], "no labels"),
        ([0.5, 150.0], ["a", "b"], "percent"),
    ],
)
def test_plot_ap_per_label_rejects_bad_input(tmp_path: Path, ap: list, labels: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plots.plot_ap_per_label(ap, labels, tmp_path / "ap.png")


def test_failed_write_keeps_previous_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history_png, ap_png = tmp_path / "history.png", tmp_path / "ap.png"
    plots.plot_history(_history(True), history_png)
    plots.plot_ap_per_label([10.0, 90.0], ["a", "b"], ap_png)
    before = history_png.read_bytes(), ap_png.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("simulated rename failure")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        plots.plot_history(_history(False), history_png)
    with pytest.raises(OSError, match="simulated"):
        plots.plot_ap_per_label([30.0, 40.0], ["c", "d"], ap_png)
    assert (history_png.read_bytes(), ap_png.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ap.png", "history.png"]


def test_one_renderer_for_files_bytes_images_and_pixels(tmp_path: Path) -> None:
    fig = Figure(figsize=(3, 2))
    fig.patch.set_facecolor("black")  # the PNG forms are rendered on white whatever the figure says
    fig.subplots().plot([0, 1], [1, 0])
    plots.save_figure(fig, tmp_path / "f.png")
    assert _check_png(tmp_path / "f.png", 300, 200) == (300, 200)
    assert (tmp_path / "f.png").read_bytes() == plots.figure_png(fig)
    image = plots.figure_image(fig)
    assert image.mode == "RGB" and image.size == (300, 200) and image.getpixel((0, 0)) == (255, 255, 255)
    pixels = plots.figure_pixels(fig)
    assert pixels.shape == (200, 300, 3) and pixels.dtype.name == "uint8"
    plots.save_image(image, tmp_path / "i.png")
    with Image.open(tmp_path / "i.png") as again:
        assert again.convert("RGB").tobytes() == image.tobytes()
    assert plots.image_png(image) == (tmp_path / "i.png").read_bytes()
