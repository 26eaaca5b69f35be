"""Where MSRN looked for each label, at each of its three depths: attention maps and their pictures.

MSRN attends separately for every label c, depth s and channel d (design section 5):

    alpha[b, n, c, d] = softmax over positions n of F_s[b, n, d] * L[c, d]
    V_s[b, c, d]      = sum_n alpha[b, n, c, d] * F_s[b, n, d]

One picture per (label, depth) needs one number per position, so the channels are summarised
by the contribution-weighted map

    m[b, c, n] = sum_d alpha[b, n, c, d] * |F_s[b, n, d]|,  normalised to sum to 1 over n.

Why this and not the plain channel mean of alpha: V is built from the terms alpha * F, so this
is the share of the label's attended vector that position n supplies. Channels whose label
weight L[c, d] is near zero attend almost uniformly and would wash the plain mean out to a flat
field; channels whose features are near zero contribute nothing to V and are rightly ignored
here. The map is a distribution over positions, so `N_s * m` reads as "times the uniform share",
which is how the pictures state how concentrated a map is.

Maps are computed only for the labels asked for (B x k x D x N_s temporaries, small), on the
pooled feature maps the classifier reads (`MSRN.feature_maps`).
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from msrn.errors import MSRNError
from msrn.io import atomic_write_bytes
from msrn.models.msrn import MSRN

DEPTH_NAMES = ("fine", "middle", "coarse")
COLORMAP = "turbo"
PANEL_SIDE = 256  # longer side of one panel in pixels


def require_msrn(model: nn.Module, where: str = "this checkpoint") -> MSRN:
    """The model as MSRN, or one clear line: only MSRN has label-guided attention to show."""
    if not isinstance(model, MSRN):
        raise MSRNError(
            f"{where} holds a {type(model).__name__} (a baseline without label-guided attention); "
            "attention maps need an MSRN checkpoint"
        )
    return model


def depth_features(model: MSRN, x: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The three projected feature maps (B x D x N_s) and their spatial sizes (H_s, W_s)."""
    maps = model.feature_maps(x)
    return [m.flatten(2) for m in maps], [(m.shape[2], m.shape[3]) for m in maps]


def maps_from_features(
    feats: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], local: torch.Tensor, label_indices: torch.Tensor
) -> list[torch.Tensor]:
    """Contribution-weighted attention maps (see the module docstring), each B x k x H_s x W_s.

    feats: the three B x D x N_s feature maps; local: L (C x D); label_indices: B x k label ids.
    """
    sem = local[label_indices]  # B x k x D
    out = []
    for f, (h, w) in zip(feats, sizes, strict=True):
        f = f.float()
        alpha = torch.softmax(f[:, None] * sem[..., None].float(), dim=-1)  # B x k x D x N
        m = (alpha * f.abs()[:, None]).sum(2)  # B x k x N
        m = m / m.sum(-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
        out.append(m.reshape(*m.shape[:2], h, w))
    return out


def _as_index_matrix(label_indices: Sequence[int] | torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    """Label ids as a B x k LongTensor: one list for every image, or one row per image."""
    idx = torch.as_tensor(label_indices, dtype=torch.long)
    if idx.dim() == 1:
        idx = idx[None].expand(batch, -1)
    if idx.dim() != 2 or idx.shape[0] != batch:
        raise MSRNError(f"label_indices must be k ids or a {batch} x k matrix, got shape {tuple(idx.shape)}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= num_classes):
        raise MSRNError(f"label indices must lie in 0..{num_classes - 1}")
    return idx


@torch.no_grad()
def attention_maps(
    model: nn.Module, x: torch.Tensor, label_indices: Sequence[int] | torch.Tensor
) -> list[torch.Tensor]:
    """Per-label attention at the three depths: 3 tensors B x k x H_s x W_s, each map summing to 1.

    label_indices: k label ids for every image, or a B x k matrix (one row per image).
    """
    model = require_msrn(model, "this model")
    idx = _as_index_matrix(label_indices, x.shape[0], model.cfg.num_classes).to(x.device)
    feats, sizes = depth_features(model, x)
    local, _, _ = model.semantics()
    return maps_from_features(feats, sizes, local, idx)


@torch.no_grad()
def explained_forward(model: MSRN, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Logits, each image's k best label ids (B x k) and their attention maps, from one backbone pass.

    The logits come from `MSRN.classify`, as in `MSRN.forward`, so they are the model's own.
    """
    feats, sizes = depth_features(model, x)
    local, groups, _ = model.semantics()
    logits = model.classify(feats, torch.cat([local, groups], 0))
    idx = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return logits, idx, maps_from_features(feats, sizes, local, idx)


@dataclass
class Explanation:
    """One image's top labels, their probabilities and attention maps (3 arrays k x H_s x W_s)."""

    image: Image.Image
    name: str
    labels: list[str]
    scores: list[float]
    maps: list[np.ndarray]
    thresholds: list[float] = field(default_factory=list)
    depths: tuple[int, ...] = (1, 2, 3)  # the depth each map comes from (fewer in an ablated model)

    def depth_titles(self) -> list[str]:
        """Column titles: depth number, scale word and grid size."""
        return [
            f"depth {s} · {DEPTH_NAMES[s - 1]} · {m.shape[1]}×{m.shape[2]}"
            for s, m in zip(self.depths, self.maps, strict=True)
        ]


def concentration(heat: np.ndarray) -> float:
    """Peak of a map that sums to 1, as a multiple of the uniform share (1.0 = looked everywhere)."""
    return float(heat.max() * heat.size)


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
    base = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    heat = np.asarray(heat, dtype=np.float32)
    up = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.BILINEAR), dtype=np.float32)
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


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of a PIL image, in memory."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def figure(expl: Explanation, side: int = PANEL_SIDE) -> Figure:
    """A labelled grid: the input, then the three depths' attention, one row per top label."""
    rows = panels(expl, side)
    k = max(1, len(rows))
    aspect = expl.image.height / expl.image.width
    cell = 2.6
    cols = 1 + len(expl.maps)
    fig = Figure(figsize=(cols * cell + 0.6, k * cell * min(max(aspect, 0.5), 1.6) + 1.5), layout="constrained")
    fig.patch.set_facecolor("white")
    axes = np.asarray(fig.subplots(k, cols, squeeze=False))
    shown = expl.image.convert("RGB").resize(panel_size(expl.image, side), Image.BILINEAR)
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
                    fontsize=11, fontweight="bold", rotation=0, ha="right", va="center", labelpad=10,
                )
            else:
                ax.text(
                    0.98, 0.03, f"peak {concentration(expl.maps[col - 1][j]):.1f}× uniform",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="white",
                    bbox=dict(boxstyle="round,pad=0.2", facecolor="black", alpha=0.55, linewidth=0),
                )
    fig.suptitle(f"{expl.name}: where MSRN looked for each label", fontsize=12)
    bar = ScalarMappable(norm=Normalize(0, 1), cmap=COLORMAP)
    cb = fig.colorbar(bar, ax=axes.ravel().tolist(), orientation="horizontal", fraction=0.04, aspect=60, shrink=0.6)
    cb.set_ticks([0, 1], labels=["least attention", "most attention (each panel scaled to its own range)"])
    cb.ax.tick_params(labelsize=8)
    return fig


def save_figure(expl: Explanation, path: str | os.PathLike[str]) -> None:
    """Render the explanation grid to a PNG file, written atomically."""
    fig = figure(expl)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
