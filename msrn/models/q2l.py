"""Query2Label (Liu, Zhang, Yang, Su and Zhu, "Query2Label: A Simple Transformer Way to Multi-Label
Classification", 2021).

A DETR-style transformer: the feature map, with a 2-D sine positional encoding P, passes through encoder layers;
C learnt label queries Q (one per label) read it in decoder layers by cross-attention (their self-attention is
removed, as the public code's default), and a per-label linear layer scores each query's output:

    S    = X W_in (the identity when D = d),  P = sine(h, w)       B x hw x D
    S    = LN(S + MHA(S + P, S + P, S)),  S = LN(S + FFN(S))        (encoder layers, post-norm)
    T    = 0                                                        B x C x D
    T    = LN(T + MHA(T + Q, S + P, S)),  T = LN(T + FFN(T))        (decoder layers, cross-attention only)
    T    = LN(T)                                                    (the decoder's final norm)
    logit_c = <W_c, T_c> + b_c                                      B x C (group-wise linear)

FFN(x) = W_2 Dropout(ReLU(W_1 x)). Sine encoding (DETR's, normalised): for D/2 features per axis,
pos(y, 2i) = sin(y' / 10000^(2i / (D/2))), pos(y, 2i+1) = cos(...), y' = y / h * 2 pi for rows 1..h, the same
for columns; P = [pos_y ; pos_x]. The ResNet-101 model: D = 2048, 4 heads, FFN 8192, 1 encoder and 2 decoder layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import register_model
from msrn.models.headnet import HeadNetwork, create_head, spatial


def sine_positions(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The normalised 2-D sine encoding: hw x dim (rows first, then columns, as the map flattens)."""
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale  # h
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale  # w
    i = torch.arange(half, dtype=torch.float32, device=device)
    freq = 10000.0 ** (2 * torch.div(i, 2, rounding_mode="floor") / half)  # half

    def encode(v: torch.Tensor) -> torch.Tensor:  # n -> n x half, sin on even features, cos on odd
        a = v[:, None] / freq
        return torch.where(i.long() % 2 == 0, a.sin(), a.cos())

    py, px = encode(y), encode(x)  # h x half, w x half
    return torch.cat([py[:, None].expand(h, w, half), px[None].expand(h, w, half)], -1).reshape(h * w, 2 * half)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.drop(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """S = LN(S + MHA(S+P, S+P, S)); S = LN(S + FFN(S))."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(dim, feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, s: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = s + pos
        s = self.norm1(s + self.drop1(self.attn(qk, qk, s, need_weights=False)[0]))
        return self.norm2(s + self.drop2(self.ffn(s)))


class DecoderLayer(nn.Module):
    """T = LN(T + MHA(T+Q, S+P, S)); T = LN(T + FFN(T)) (no self-attention)."""

    def __init__(self, dim: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(dim, feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, t: torch.Tensor, queries: torch.Tensor, s: torch.Tensor, pos: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        att, weights = self.attn(t + queries, s + pos, s, need_weights=need_weights)
        t = self.norm1(t + self.drop1(att))
        return self.norm2(t + self.drop2(self.ffn(t))), weights


class Query2Label(HeadNetwork):
    family = "q2l"
    title = "Query2Label"
    explainable = True
    label_shaped = r"queries\.weight|out_weight|out_bias"

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        labels: list[str] | None = None,
        dim: int | None = None,
        heads: int = 4,
        feedforward: int | None = None,
        encoder_layers: int = 1,
        decoder_layers: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__(backbone, num_classes, labels, {})
        d = self.width
        dim = dim or d
        feedforward = feedforward or 4 * dim
        self.settings.update(
            dim=dim,
            heads=heads,
            feedforward=feedforward,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            dropout=dropout,
        )
        self.dim = dim
        self.input_proj: nn.Module = nn.Identity() if dim == d else nn.Conv2d(d, dim, 1)  # W_in
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, feedforward, dropout) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, heads, feedforward, dropout) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.queries = nn.Embedding(num_classes, dim)  # Q
        self.out_weight = nn.Parameter(torch.empty(num_classes, dim))  # W (group-wise linear)
        self.out_bias = nn.Parameter(torch.empty(num_classes))  # b
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.out_weight, -bound, bound)
        nn.init.uniform_(self.out_bias, -bound, bound)

    def decode(self, fmap: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """X -> the label queries' outputs T (B x C x D) and, if asked, the last layer's attention (B x C x hw)."""
        s = spatial(self.input_proj(fmap))  # B x hw x D
        pos = sine_positions(fmap.shape[2], fmap.shape[3], self.dim, fmap.device).to(s.dtype)  # hw x D
        for layer in self.encoder:
            s = layer(s, pos)
        queries = self.queries.weight  # C x D
        t = torch.zeros(s.shape[0], *queries.shape, dtype=s.dtype, device=s.device)  # B x C x D
        weights = None
        for n, layer in enumerate(self.decoder):
            t, weights = layer(t, queries, s, pos, need_weights and n == len(self.decoder) - 1)
        return self.decoder_norm(t), weights

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        t, _ = self.decode(fmap)
        return (self.out_weight * t).sum(-1) + self.out_bias

    def label_representations(self) -> torch.Tensor:
        """Q: the learnt label queries."""
        return self.queries.weight

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's cross-attention of each label query (mean over heads): B x C x h x w."""
        _, weights = self.decode(fmap, need_weights=True)
        assert weights is not None  # asked for, and there is at least one decoder layer
        return weights.reshape(fmap.shape[0], self.num_classes, *fmap.shape[2:])


@register_model
def q2l_resnet101(**kwargs: Any) -> Query2Label:
    """Query2Label on ResNet-101: the paper's model (D = 2048, 4 heads, FFN 8192, 1 + 2 layers)."""
    return create_head(Query2Label, "resnet101", **kwargs)


@register_model
def q2l_resnet50(**kwargs: Any) -> Query2Label:
    """Query2Label on ResNet-50."""
    return create_head(Query2Label, "resnet50", **kwargs)


@register_model
def q2l_resnet18(**kwargs: Any) -> Query2Label:
    """Query2Label on ResNet-18."""
    return create_head(Query2Label, "resnet18", **kwargs)


@register_model
def q2l_tiny(**kwargs: Any) -> Query2Label:
    """Query2Label on the tiny ResNet (CPU tests and the scenes benchmark) with D = 128, 4 heads."""
    return create_head(Query2Label, "resnet_tiny", **{"heads": 4, **kwargs})


@register_model
def q2l_timm(**kwargs: Any) -> Query2Label:
    """Query2Label on a timm backbone: `backbone=NAME` (or `timm:NAME`), e.g. convnext_tiny."""
    return create_head(Query2Label, None, **kwargs)
