"""Figures and images as PNG (the one place that renders and encodes them), and the training-history
and per-label AP figures. Rendering uses Agg on a Figure, never pyplot's global state."""

from __future__ import annotations

import io as _bytes_io
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from msrn.io import atomic_write_bytes

_DPI = 100
_MAX_HEIGHT_IN = 120.0  # keeps very long label lists under Agg's pixel limit


def figure_png(fig: Figure) -> bytes:
    """The figure rendered with Agg as PNG bytes, on white."""
    FigureCanvasAgg(fig)
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Render the figure to PNG and write it atomically."""
    atomic_write_bytes(path, figure_png(fig))


def figure_image(fig: Figure) -> Image.Image:
    """The figure as an RGB PIL image (its PNG rendering), to paste beside other pictures."""
    return Image.open(_bytes_io.BytesIO(figure_png(fig))).convert("RGB")


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure drawn with Agg as an H x W x 3 uint8 array (for image logs that take pixels)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def image_png(image: Image.Image) -> bytes:
    """A PIL image encoded as (optimised) PNG bytes."""
    buffer = _bytes_io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """A PIL image written atomically as PNG."""
    atomic_write_bytes(path, image_png(image))


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """Epochs and values of key over the entries that have a number for it."""
    pairs = [(e["epoch"], e[key]) for e in history if e.get(key) is not None and not math.isnan(e[key])]
    return [float(x) for x, _ in pairs], [float(y) for _, y in pairs]


def plot_history(history: Sequence[dict], path: str | os.PathLike[str]) -> None:
    """Two panels, loss per epoch and mAP per epoch, so training progress is visible at a glance."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    loss_ax, map_ax = fig.subplots(1, 2)
    for ax, curves, ylabel, title in (
        (loss_ax, (("train_loss", "train"), ("test_loss", "test")), "loss", "Loss per epoch"),
        (map_ax, (("mAP", "test"), ("val_mAP", "validation")), "mAP (%)", "mAP per epoch"),
    ):
        for key, name in curves:
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    save_figure(fig, path)


MAX_BARS = 60  # above this many labels the AP figure is a histogram and the best and worst labels' bars
SHOWN_BARS = 20  # bars of each end in that figure


def _ap_summary_figure(scored: list[tuple[float, str]], missing: list[str], title: str | None) -> Figure:
    """Many labels: the histogram of AP over labels, then the SHOWN_BARS best and worst labels' bars."""
    fig = Figure(figsize=(12, 7), layout="constrained")
    hist, best, worst = fig.subplots(1, 3, width_ratios=(1.4, 1, 1))
    values = np.array([v for v, _ in scored])
    hist.hist(values, bins=np.linspace(0, 100, 21), color="tab:blue")
    if scored:
        hist.axvline(values.mean(), color="tab:red", linestyle="--", label=f"mAP {values.mean():.2f}")
        hist.legend(loc="upper left")
    hist.set_xlabel("average precision (%)")
    hist.set_ylabel("labels")
    for ax, part, name in ((best, scored[-SHOWN_BARS:], "best"), (worst, scored[:SHOWN_BARS], "worst")):
        ax.barh(range(len(part)), [v for v, _ in part], color="tab:blue", height=0.8)
        ax.set_yticks(range(len(part)), [n for _, n in part], fontsize=7)
        ax.set_xlim(0, 100)
        ax.set_xlabel("AP (%)")
        ax.set_title(f"{name} {len(part)}")
    suffix = f", {len(missing)} without positives (left out)" if missing else ""
    fig.suptitle(title or f"AP per label ({len(scored)} labels{suffix})")
    return fig


def plot_ap_per_label(
    ap: Sequence[float | None],
    labels: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> None:
    """Horizontal AP bars (percent, as multilabel_metrics' ap_per_label) sorted by AP, with the mAP line."""
    save_figure(ap_per_label_figure(ap, labels, title), path)


def ap_per_label_figure(ap: Sequence[float | None], labels: Sequence[str], title: str | None = None) -> Figure:
    """The figure of plot_ap_per_label, unrendered (TensorBoard draws it into its event file)."""
    if len(ap) != len(labels):
        raise ValueError(f"got {len(ap)} AP values for {len(labels)} labels")
    if not ap:
        raise ValueError("no labels to plot")
    scored = sorted(((v, name) for v, name in zip(ap, labels) if v is not None), key=lambda p: p[0])
    if any(not 0.0 <= v <= 100.0 for v, _ in scored):
        raise ValueError("AP values must be percentages in [0, 100] (None for labels without positives)")
    missing = [name for v, name in zip(ap, labels) if v is None]
    if len(ap) > MAX_BARS:
        return _ap_summary_figure(scored, missing, title)
    # Labels without positives go at the bottom, then the scored labels with the best at the top.
    names = missing + [name for _, name in scored]
    values = [0.0] * len(missing) + [v for v, _ in scored]
    n = len(names)
    height = min(_MAX_HEIGHT_IN, 1.6 + 0.24 * n)
    fig = Figure(figsize=(8, height), layout="constrained")
    ax = fig.subplots()
    colours = ["lightgrey"] * len(missing) + ["tab:blue"] * len(scored)
    ax.barh(range(n), values, color=colours, height=0.8)
    fontsize = max(4.0, min(9.0, 750.0 / n))
    ax.set_yticks(range(n), names, fontsize=fontsize)
    for i in range(len(missing)):
        ax.text(1.0, i, "no positives", va="center", fontsize=fontsize, color="dimgrey", style="italic")
    if scored:
        mean_ap = sum(v for v, _ in scored) / len(scored)
        ax.axvline(mean_ap, color="tab:red", linestyle="--", label=f"mAP {mean_ap:.2f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("average precision (%)")
    ax.set_ylabel("label")
    suffix = f", {len(missing)} without positives" if missing else ""
    ax.set_title(title or f"AP per label ({len(scored)} labels{suffix})")
    ax.grid(True, axis="x", alpha=0.3)
    return fig
