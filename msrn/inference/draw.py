"""Pictures of where MSRN looked: each attention map laid over its image, and the labelled grid of them.

The maps come from `msrn.inference.explain`; this module only draws them (matplotlib, Pillow).
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from msrn import plots
from msrn.inference.explain import Explanation, concentration, picture_notes

COLORMAP = "turbo"
PANEL_SIDE = 256  # longer side of one panel in pixels


def panel_size(image: Image.Image, side: int = PANEL_SIDE) -> tuple[int, int]:
    """Display size that keeps the image's aspect with its longer side equal to `side`."""
    scale = side / max(image.width, image.height)
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def overlay(image: Image.Image, heat: np.ndarray, side: int = PANEL_SIDE) -> Image.Image:
    """The image with one attention map laid over it: dimmed where the label was not looked for.

    The map (in the model's square input frame, which stretches linearly onto the original
    image) is upsampled bilinearly, scaled min-to-max, coloured with turbo and blended in
    proportion to its value, so high attention is both bright and coloured; a flat map is all lit.
    """
    size = panel_size(image, side)
    base = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    heat = np.asarray(heat, dtype=np.float32)
    up = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    lo, hi = float(heat.min()), float(heat.max())
    # a flat map (one position, or no preference) was looked at everywhere alike: show it all lit
    v = (up - lo) / (hi - lo) if hi - lo > 1e-6 * max(hi, 1e-30) else np.ones_like(up)
    v = np.clip(v, 0.0, 1.0)[..., None]
    colour = colormaps[COLORMAP](v[..., 0])[..., :3].astype(np.float32)
    lit = base * (0.35 + 0.65 * v)
    out = lit * (1 - 0.55 * v) + colour * (0.55 * v)
    return Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")


def panels(expl: Explanation, side: int = PANEL_SIDE) -> list[list[Image.Image]]:
    """Overlay images: one row per label, one column per depth."""
    return [[overlay(expl.image, m[j], side) for m in expl.maps] for j in range(len(expl.labels))]


def figure(expl: Explanation, side: int = PANEL_SIDE) -> Figure:
    """A labelled grid: the input, then the attention at each depth the model reads, one row per top label."""
    rows = panels(expl, side)
    k = max(1, len(rows))
    aspect = expl.image.height / expl.image.width
    cell = 2.6
    cols = 1 + len(expl.maps)
    title = "\n".join([f"{expl.name}: where {expl.model} looked for each label",
                       *(textwrap.fill(note, 28 * cols) for note in picture_notes(expl))])  # fmt: skip
    lines = title.count("\n")
    fig = Figure(figsize=(cols * cell + 0.6, k * cell * min(max(aspect, 0.5), 1.6) + 1.5 + 0.25 * lines),
                 layout="constrained")  # fmt: skip
    fig.patch.set_facecolor("white")
    axes = np.asarray(fig.subplots(k, cols, squeeze=False))
    shown = expl.image.convert("RGB").resize(panel_size(expl.image, side), Image.Resampling.BILINEAR)
    titles = ["input", *expl.depth_titles()]
    for j in range(k):
        for col in range(cols):
            ax = axes[j, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j >= len(rows):
                continue
            ax.imshow(shown if col == 0 else rows[j][col - 1], interpolation="bilinear")
            if j == 0:
                ax.set_title(titles[col], fontsize=10, fontweight="bold")
            if col == 0:
                passed = j < len(expl.thresholds) and expl.scores[j] >= expl.thresholds[j]
                ax.set_ylabel(
                    f"{expl.labels[j]}\n{expl.scores[j]:.3f}" + ("" if passed or not expl.thresholds else " (below)"),
                    fontsize=11,
                    fontweight="bold",
                    rotation=0,
                    ha="right",
                    va="center",
                    labelpad=10,
                )
            else:
                ax.text(
                    0.98,
                    0.03,
                    f"peak {concentration(expl.maps[col - 1][j]):.1f}× uniform",
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize=7.5,
                    color="white",
                    bbox=dict(boxstyle="round,pad=0.2", facecolor="black", alpha=0.55, linewidth=0),
                )
    fig.suptitle(title, fontsize=12 if lines == 0 else 10)
    bar = ScalarMappable(norm=Normalize(0, 1), cmap=COLORMAP)
    cb = fig.colorbar(bar, ax=axes.ravel().tolist(), orientation="horizontal", fraction=0.04, aspect=60, shrink=0.6)
    cb.set_ticks([0, 1], labels=["least attention", "most attention (each panel scaled to its own range)"])
    cb.ax.tick_params(labelsize=8)
    return fig


def save_explanation(expl: Explanation, path: str | os.PathLike[str]) -> None:
    """Render the explanation grid to a PNG file, written atomically."""
    plots.save_figure(figure(expl), path)
