"""Graph attention over labels (docs/design.md §3 and §4): local label semantics and group pooling.

Up to DENSE_MAX_NODES labels the attention scores are a dense C x C matrix. Beyond that the same layer runs
over the graph's edges only (a C x C float matrix per layer and step costs 100 MB at 5,000 labels and grows as
C^2, while a co-occurrence graph thresholded at tau keeps a few edges per label): scores per edge, a
softmax per row by scatter, the weighted sum by index_add. The two give the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

DENSE_MAX_NODES = 2048
# the reference's group-loss weight, and the load C x (C/K)^2 of its VOC setting (20 labels in 4 groups of 5): the
# largest at which its recipe (SGD at lr 0.1 on the label side) trains in float32 (docs/design.md §4)
GROUP_LOSS_WEIGHT = 1e-4
REFERENCE_GROUP_LOAD = 20 * 5**2


class Edges(NamedTuple):
    """A graph as edge lists: rows[e] attends to cols[e], sorted by row; every node has its self-loop."""

    rows: torch.Tensor
    cols: torch.Tensor
    num_nodes: int


def as_graph(mask: torch.Tensor | Edges, dense_max: int | None = None) -> torch.Tensor | Edges:
    """The C x C boolean mask as given up to `dense_max` (default DENSE_MAX_NODES) nodes, else its edge lists."""
    if isinstance(mask, Edges) or mask.shape[0] <= (DENSE_MAX_NODES if dense_max is None else dense_max):
        return mask
    rows, cols = mask.nonzero(as_tuple=True)
    return Edges(rows, cols, mask.shape[0])


class GraphAttention(nn.Module):
    """One GAT layer: h = xW; e_ij = LeakyReLU(a^T[h_i; h_j]) on graph edges; out = ELU(softmax(e) h + h)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_dim, out_dim))
        self.a = nn.Parameter(torch.empty(2 * out_dim, 1))
        nn.init.xavier_uniform_(self.W, gain=1.414)
        nn.init.xavier_uniform_(self.a, gain=1.414)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Edges) -> torch.Tensor:
        # x: C x in, mask: C x C bool (mask[i, j]: i attends to j) or the same graph as Edges
        h = x @ self.W  # C x out
        n = h.shape[1]
        src, dst = h @ self.a[:n], h @ self.a[n:]  # C x 1 each: a^T [h_i ; h_j] = src_i + dst_j
        if isinstance(mask, Edges):
            return F.elu(self._edge_softmax(src[:, 0], dst[:, 0], h, mask) + h)
        e = src + dst.T  # C x C
        # the dtype's lowest value, not a fixed -1e12, which fp16 (autocast) cannot hold; softmax gives
        # non-edges weight 0 either way (every row has its self-loop)
        e = F.leaky_relu(e, 0.2).masked_fill(~mask, torch.finfo(e.dtype).min)
        att = torch.softmax(e, dim=1)
        return F.elu(att @ h + h)

    @staticmethod
    def _edge_softmax(src: torch.Tensor, dst: torch.Tensor, h: torch.Tensor, g: Edges) -> torch.Tensor:
        """sum_j softmax_j(e_ij) h_j over each row's edges: C x out."""
        e = F.leaky_relu(src[g.rows] + dst[g.cols], 0.2)  # E
        # shifted by the row's largest score, a constant to the softmax (so no gradient flows through it)
        top = e.new_full((g.num_nodes,), torch.finfo(e.dtype).min).scatter_reduce(0, g.rows, e.detach(), "amax")
        w = (e - top[g.rows]).exp()  # E
        den = e.new_zeros(g.num_nodes).index_add(0, g.rows, w)  # C
        return h.new_zeros(h.shape).index_add(0, g.rows, (w / den[g.rows])[:, None] * h[g.cols])


class GATStack(nn.Module):
    """GAT layers applied in sequence: word features -> local label semantics (C x D)."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(GraphAttention(i, o) for i, o in zip(dims[:-1], dims[1:], strict=False))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Edges) -> torch.Tensor:
        graph = as_graph(mask)
        for layer in self.layers:
            x = layer(x, graph)
        return x


class GroupPooling(nn.Module):
    """Soft-assign C labels to K groups: Z = GAT(x), S = softmax_k GAT(x), groups G = S^T Z."""

    def __init__(self, dim: int, num_groups: int):
        super().__init__()
        self.embed = GraphAttention(dim, dim)
        self.assign = GraphAttention(dim, num_groups)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Edges) -> tuple[torch.Tensor, torch.Tensor]:
        graph = as_graph(mask)
        z = self.embed(x, graph)  # C x D
        s = torch.softmax(self.assign(x, graph), dim=1)  # C x K
        return s.T @ z, s  # K x D, C x K


def group_loss(
    local: torch.Tensor, groups: torch.Tensor, assign: torch.Tensor, weight: float = GROUP_LOSS_WEIGHT
) -> torch.Tensor:
    """weight * sum_i || L_i - G_{argmax_k S_ik} ||_2: pulls each label toward its group."""
    return weight * (local - groups[assign.argmax(dim=1)]).norm(dim=1).sum()


def group_loss_weight(num_classes: int, num_groups: int, weight: float = GROUP_LOSS_WEIGHT) -> float:
    """The group loss's weight for C labels in K groups: `weight` up to the load C x (C/K)^2 = REFERENCE_GROUP_LOAD
    (VOC, Apparel), `weight` x REFERENCE_GROUP_LOAD / (C x (C/K)^2) above it. The loss sums, over C labels, the
    distance to a group that sums C/K labels' embeddings, and a step on the shared label-side weights moves each
    group by C/K rows; at lr 0.1 the reference's fixed weight diverges from COCO's 80 labels in 4 groups on."""
    group_size = num_classes / num_groups
    return weight * min(1.0, REFERENCE_GROUP_LOAD / (num_classes * group_size**2))
