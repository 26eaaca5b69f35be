"""Graph attention over labels (docs/design.md §3 and §4): local label semantics and group pooling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GraphAttention(nn.Module):
    """One GAT layer: h = xW; e_ij = LeakyReLU(a^T[h_i; h_j]) on graph edges; out = ELU(softmax(e) h + h)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_dim, out_dim))
        self.a = nn.Parameter(torch.empty(2 * out_dim, 1))
        nn.init.xavier_uniform_(self.W, gain=1.414)
        nn.init.xavier_uniform_(self.a, gain=1.414)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: C x in, mask: C x C bool (mask[i, j]: i attends to j)
        h = x @ self.W  # C x out
        n = h.shape[1]
        e = h @ self.a[:n] + (h @ self.a[n:]).T  # C x C: a^T [h_i ; h_j]
        # the dtype's lowest value, not a fixed -1e12, which fp16 (autocast) cannot hold; softmax gives
        # non-edges weight 0 either way (every row has its self-loop)
        e = F.leaky_relu(e, 0.2).masked_fill(~mask, torch.finfo(e.dtype).min)
        att = torch.softmax(e, dim=1)
        return F.elu(att @ h + h)


class GATStack(nn.Module):
    """GAT layers applied in sequence (`label_embed.layers.{0,1}` in reference checkpoints)."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(GraphAttention(i, o) for i, o in zip(dims[:-1], dims[1:], strict=False))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class GroupPooling(nn.Module):
    """Soft-assign C labels to K groups: Z = GAT(x), S = softmax_k GAT(x), groups G = S^T Z."""

    def __init__(self, dim: int, num_groups: int):
        super().__init__()
        self.embed = GraphAttention(dim, dim)
        self.assign_mat = GraphAttention(dim, num_groups)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x, mask)  # C x D
        s = torch.softmax(self.assign_mat(x, mask), dim=1)  # C x K
        return s.T @ z, s  # K x D, C x K


class GroupStack(nn.Module):
    """Holds the one pooling layer under the reference's key path `group_embed.layers.0`."""

    def __init__(self, dim: int, num_groups: int):
        super().__init__()
        self.layers = nn.ModuleList([GroupPooling(dim, num_groups)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[0](x, mask)


def group_loss(local: torch.Tensor, groups: torch.Tensor, assign: torch.Tensor, weight: float = 1e-4) -> torch.Tensor:
    """weight * sum_i || L_i - G_{argmax_k S_ik} ||_2: pulls each label toward its group."""
    return weight * (local - groups[assign.argmax(dim=1)]).norm(dim=1).sum()
