"""ML-Decoder (Ridnik, Sharir, Ben-Cohen, Ben-Baruch and Noy, "ML-Decoder: Scalable and Versatile Classification
Head", WACV 2023).

A transformer decoder without self-attention: K fixed (not learnt) group queries read the feature map by
cross-attention, and a group fully-connected layer turns each query's output into F = ceil(C / K) labels:

    E      = ReLU(X W_e + b_e)                         B x hw x D       (features embedded to the decoder's width)
    T      = LN_1(Q + Dropout(Q))                      K x D            (what is left of the removed self-attention)
    T      = LN_2(T + Dropout(MHA(T, E, E)))           B x K x D        (cross-attention, 8 heads)
    T      = LN_3(T + Dropout(W_2 ReLU(W_1 T)))        B x K x D        (feed-forward, width 2048)
    o[k,f] = <T_k, P[k, :, f]>                         B x K x F        (group fully-connected, P: K x D x F)
    logits = flatten(o)[:, :C] + b                     B x C            (label c is output f of group c // F)

K = min(groups, C) with 100 groups by default (so one query per label on COCO's 80); D = 768.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import register_model
from msrn.models.headnet import HeadNetwork, create_head, spatial

TINY = {"dim": 64, "heads": 4, "feedforward": 128}  # the tiny backbone's decoder widths


class MLDecoder(HeadNetwork):
    family = "mldecoder"
    title = "ML-Decoder"
    explainable = True
    label_shaped = r"queries|group_fc|group_bias"
    queries: torch.Tensor  # buffer

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        labels: list[str] | None = None,
        groups: int = 100,
        dim: int = 768,
        heads: int = 8,
        feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        k = min(int(groups), num_classes)
        settings = {"groups": int(groups), "dim": dim, "heads": heads, "feedforward": feedforward, "dropout": dropout}
        super().__init__(backbone, num_classes, labels, settings)
        self.per_group = math.ceil(num_classes / k)  # F
        self.embed = nn.Linear(self.width, dim)  # W_e, b_e
        self.register_buffer("queries", torch.randn(k, dim))  # Q: fixed, N(0, 1) as nn.Embedding draws
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn1, self.ffn2 = nn.Linear(dim, feedforward), nn.Linear(feedforward, dim)
        self.drop = nn.Dropout(dropout)
        self.group_fc = nn.Parameter(torch.empty(k, dim, self.per_group))  # P
        self.group_bias = nn.Parameter(torch.zeros(num_classes))  # b
        nn.init.xavier_normal_(self.group_fc)

    def decode(self, fmap: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """X -> the group queries' outputs T (B x K x D) and, if asked, their attention (B x K x hw)."""
        e = F.relu(self.embed(spatial(fmap)))  # B x hw x D
        q = self.norm1(self.queries + self.drop(self.queries))  # K x D
        t = q[None].expand(e.shape[0], -1, -1)  # B x K x D
        att, weights = self.cross(t, e, e, need_weights=need_weights)
        t = self.norm2(t + self.drop(att))
        t = self.norm3(t + self.drop(self.ffn2(self.drop(F.relu(self.ffn1(t))))))
        return t, weights

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        t, _ = self.decode(fmap)
        out = torch.einsum("bkd,kdf->bkf", t, self.group_fc)  # B x K x F
        return out.flatten(1)[:, : self.num_classes] + self.group_bias

    def label_representations(self) -> torch.Tensor:
        """P[c // F, :, c % F]: each label's output weights in the group fully-connected layer (the queries are
        fixed and shared by a group's labels)."""
        return self.group_fc.permute(0, 2, 1).reshape(-1, self.group_fc.shape[1])[: self.num_classes]

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """Each label's group query's cross-attention (mean over heads): B x C x h x w."""
        _, weights = self.decode(fmap, need_weights=True)
        assert weights is not None  # asked for
        group = torch.arange(self.num_classes, device=fmap.device) // self.per_group
        return weights[:, group].reshape(fmap.shape[0], self.num_classes, *fmap.shape[2:])


@register_model
def mldecoder_resnet101(**kwargs: Any) -> MLDecoder:
    """ML-Decoder on ResNet-101 (D = 768, 8 heads, FFN 2048, up to 100 groups)."""
    return create_head(MLDecoder, "resnet101", **kwargs)


@register_model
def mldecoder_resnet50(**kwargs: Any) -> MLDecoder:
    """ML-Decoder on ResNet-50."""
    return create_head(MLDecoder, "resnet50", **kwargs)


@register_model
def mldecoder_resnet18(**kwargs: Any) -> MLDecoder:
    """ML-Decoder on ResNet-18."""
    return create_head(MLDecoder, "resnet18", **kwargs)


@register_model
def mldecoder_tiny(**kwargs: Any) -> MLDecoder:
    """ML-Decoder on the tiny ResNet (CPU tests and the scenes benchmark) with D = 64, 4 heads, FFN 128."""
    return create_head(MLDecoder, "resnet_tiny", **{**TINY, **kwargs})


@register_model
def mldecoder_timm(**kwargs: Any) -> MLDecoder:
    """ML-Decoder on a timm backbone: `backbone=NAME` (or `timm:NAME`), e.g. convnext_tiny."""
    return create_head(MLDecoder, None, **kwargs)
