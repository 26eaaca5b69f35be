"""Where MSRN looked for each label, at each depth it reads (all three, or those --depths kept): the attention
maps (drawn by `draw`). The compared heads with spatial attention (CSRA, ML-Decoder, Query2Label, ADD-GCN; see
`HeadNetwork.attention`) show their own per-label attention over the last feature map, as one depth (3).

MSRN attends separately for every label c, depth s and channel d (docs/design.md §5):

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
pooled, projected maps the classifier reads (`MSRN.projected_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from msrn.errors import MSRNError
from msrn.models import MSRN, HeadNetwork

DEPTH_NAMES = ("fine", "middle", "coarse")
ALIKE = 0.05  # labels' maps this close (share of attention that differs) are called alike on the pictures


def require_msrn(model: nn.Module, where: str = "this checkpoint") -> MSRN:
    """The model as MSRN, or one clear line: only MSRN has label-guided attention to show."""
    if not isinstance(model, MSRN):
        raise MSRNError(
            f"{where} holds a {type(model).__name__} (a baseline without label-guided attention); "
            "attention maps need an MSRN checkpoint"
        )
    return model


def require_explainable(model: nn.Module, where: str = "this checkpoint") -> MSRN | HeadNetwork:
    """The model, if it attends spatially per label (MSRN, or a head with `explainable`), else one clear line."""
    if is_explainable(model):
        return cast(MSRN | HeadNetwork, model)
    if isinstance(model, HeadNetwork):
        what = "a head without per-label spatial attention"
    else:
        what = "a baseline without label-guided attention"
    raise MSRNError(
        f"{where} holds a {type(model).__name__} ({what}); attention maps need MSRN, CSRA, ML-Decoder, "
        "Query2Label or ADD-GCN"
    )


def is_explainable(model: nn.Module) -> bool:
    """Whether `--explain` can show the model's per-label attention."""
    return isinstance(model, MSRN) or (isinstance(model, HeadNetwork) and model.explainable)


def explained_by(model: nn.Module) -> str:
    """The name the pictures give the model: MSRN, or a compared head's paper name."""
    return model.title if isinstance(model, HeadNetwork) else "MSRN"


def explained_depths(model: nn.Module) -> tuple[int, ...]:
    """The depths an explainable model's maps come from: MSRN's read depths, the last map (3) for the others."""
    model = require_explainable(model, "this model")
    return tuple(model.cfg.depths) if isinstance(model, MSRN) else (3,)


def label_maps(
    projected: Sequence[torch.Tensor], local: torch.Tensor, label_indices: torch.Tensor
) -> list[torch.Tensor]:
    """Contribution-weighted attention maps (see the module docstring), each B x k x H_s x W_s.

    projected: MSRN.projected_maps, each B x D x H_s x W_s; local: L (C x D); label_indices: B x k label ids.
    """
    sem = local[label_indices]  # B x k x D
    out = []
    for p in projected:
        h, w = p.shape[2:]
        f = p.flatten(2).float()  # B x D x N
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
    """Per-label attention at each depth the model reads: one B x k x H_s x W_s tensor per depth, each map
    summing to 1.

    label_indices: k label ids for every image, or a B x k matrix (one row per image).
    """
    model = require_explainable(model, "this model")
    if isinstance(model, HeadNetwork):
        idx = _as_index_matrix(label_indices, x.shape[0], model.num_classes).to(x.device)
        return [model.label_maps_of(model.features(x), idx)]
    idx = _as_index_matrix(label_indices, x.shape[0], model.cfg.num_classes).to(x.device)
    return label_maps(model.projected_maps(x), model.semantics().local, idx)


@torch.no_grad()
def explained_forward(
    model: MSRN | HeadNetwork, x: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Logits, each image's k best label ids (B x k) and their attention maps, from one backbone pass.

    The logits come from `MSRN.classify` (or the head's own `head`), as in forward, so they are the model's own.
    """
    if isinstance(model, HeadNetwork):
        logits, idx, maps = model.explained(x, k)
        return logits, idx, [maps]
    projected, sem = model.projected_maps(x), model.semantics()
    logits = model.classify(projected, sem.rows(), assign=sem.assign)
    idx = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return logits, idx, label_maps(projected, sem.local, idx)


@dataclass
class Explanation:
    """One image's top labels, their probabilities and attention maps (one k x H_s x W_s array per depth read)."""

    image: Image.Image
    name: str
    labels: list[str]
    scores: list[float]
    maps: list[np.ndarray]
    thresholds: list[float] = field(default_factory=list)
    depths: tuple[int, ...] = (1, 2, 3)  # the depth each map comes from (fewer in an ablated model)
    caption: str = ""  # why this picture is shown (the demo marks its best and its failing case)
    model: str = "MSRN"  # whose attention the maps are (a compared head's paper name)

    def depth_titles(self) -> list[str]:
        """Column titles: depth number, scale word and grid size."""
        return [
            f"depth {s} · {DEPTH_NAMES[s - 1]} · {m.shape[1]}×{m.shape[2]}"
            for s, m in zip(self.depths, self.maps, strict=True)
        ]


def label_map_difference(maps: Sequence[np.ndarray]) -> float:
    """The largest share of attention that differs between two labels' maps at any depth: half the L1
    distance of two maps that each sum to 1 (0: every label looked at the same places; 1: disjoint).
    maps: one k x H_s x W_s array per depth."""
    worst = 0.0
    for m in maps:
        flat = np.asarray(m, dtype=np.float64).reshape(m.shape[0], -1)
        if len(flat) > 1:
            worst = max(worst, float(0.5 * np.abs(flat[:, None] - flat[None]).sum(-1).max()))
    return worst


def picture_notes(expl: Explanation) -> list[str]:
    """The lines written under a picture's title: its caption, and a warning when the labels' maps are
    alike, so the reader does not look for differences that are not there."""
    notes = [expl.caption] if expl.caption else []
    if len(expl.labels) > 1:
        differ = label_map_difference(expl.maps)
        if differ < ALIKE:
            notes.append(
                f"The attention maps of these labels are alike (at most {100 * differ:.1f}% of the attention "
                f"differs): {expl.model} looked at the same places for each, and told them apart in its classifier."
            )
    return notes


def concentration(heat: np.ndarray) -> float:
    """Peak of a map that sums to 1, as a multiple of the uniform share (1.0 = looked everywhere)."""
    return float(heat.max() * heat.size)
