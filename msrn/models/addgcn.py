"""ADD-GCN (Ye, He, Peng, Wu and Qiao, "Attention-Driven Dynamic Graph Convolutional Network for Multi-Label
Image Recognition", ECCV 2020).

A semantic attention module (SAM) turns the feature map X (B x d x hw) into one content vector per label, a
static graph convolution (a learnt C x C adjacency) and a dynamic one (an adjacency computed per image)
relate them, and each label is scored from its own vector; the final score averages that with the SAM's
own max-pooled activation:

    M   = conv_m(X)                      B x C x hw   (category-specific activation maps; conv_m: 1x1, no bias)
    s_m = max_j M(j)                     B x C        (the first score)
    V   = sigmoid(M) (W_t X)^T           B x C x d'   (SAM: each label's attended content, W_t: d -> d')
    H   = V + LReLU(LReLU(A_s V) W_s)    B x C x d'   (static GCN with a learnt A_s, residual)
    g   = LReLU(BN(W_g mean_c H_c))      B x d'       (the image's global representation)
    A_d = sigmoid([g ; H_j] W_a)         B x C x C    (row j: how much node j reads every node i)
    Z   = V + LReLU(LReLU(A_d H) W_d)    B x C x d'   (dynamic GCN; the residual is V, as the public code adds)
    s_r = <w_c, Z_c> + b_c               B x C        (one classifier per label)
    logit = (s_m + s_r) / 2                           (the public code's fusion, also trained on)

LReLU has slope 0.2; d' = d / 2 (1024 on ResNet-101).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import register_model
from msrn.models.headnet import HeadNetwork, create_head, spatial


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ADDGCN(HeadNetwork):
    family = "addgcn"
    title = "ADD-GCN"
    explainable = True
    label_shaped = r"(sam|static_adj|adj_fc|last)\.(weight|bias)"

    def __init__(self, backbone: str, num_classes: int, labels: list[str] | None = None, hidden: int | None = None):
        super().__init__(backbone, num_classes, labels, {})
        c, d = num_classes, self.width
        h = hidden or d // 2
        self.settings["hidden"] = h
        self.sam = nn.Conv2d(d, c, 1, bias=False)  # conv_m
        self.transform = nn.Conv2d(d, h, 1)  # W_t
        self.static_adj = nn.Linear(c, c, bias=False)  # A_s
        self.static_weight = nn.Linear(h, h)  # W_s
        self.global_fc = nn.Linear(h, h)  # W_g
        self.global_bn = nn.BatchNorm1d(h)
        self.adj_fc = nn.Linear(2 * h, c)  # W_a
        self.dynamic_weight = nn.Linear(h, h)  # W_d
        self.last = nn.Linear(h, c)  # row c: w_c, b_c (only the diagonal is read)

    def contents(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M (B x C x hw) and the SAM's label vectors V (B x C x d')."""
        m = self.sam(fmap).flatten(2)  # B x C x hw
        t = spatial(self.transform(fmap))  # B x hw x d'
        return m, torch.sigmoid(m) @ t

    def graph(self, v: torch.Tensor) -> torch.Tensor:
        """V -> Z (B x C x d'): the static then the dynamic graph convolution."""
        a_s_v = self.static_adj(v.transpose(1, 2)).transpose(1, 2)  # A_s V: B x C x d'
        h = v + lrelu(self.static_weight(lrelu(a_s_v)))
        g = lrelu(self.global_bn(self.global_fc(h.mean(1))))  # B x d'
        a_d = torch.sigmoid(self.adj_fc(torch.cat([g[:, None].expand_as(h), h], -1)))  # B x C(j) x C(i)
        return v + lrelu(self.dynamic_weight(lrelu(a_d @ h)))

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        m, v = self.contents(fmap)
        z = self.graph(v)
        s_r = (self.last.weight * z).sum(-1) + self.last.bias  # B x C
        return (m.amax(-1) + s_r) / 2

    def label_representations(self) -> torch.Tensor:
        """w_c: the per-label classifiers of the graph branch."""
        return self.last.weight

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """sigmoid(M), the SAM's weights: B x C x h x w."""
        return torch.sigmoid(self.sam(fmap))


@register_model
def addgcn_resnet101(**kwargs: Any) -> ADDGCN:
    """ADD-GCN on ResNet-101: the paper's model (d' = 1024)."""
    return create_head(ADDGCN, "resnet101", **kwargs)


@register_model
def addgcn_resnet50(**kwargs: Any) -> ADDGCN:
    """ADD-GCN on ResNet-50."""
    return create_head(ADDGCN, "resnet50", **kwargs)


@register_model
def addgcn_resnet18(**kwargs: Any) -> ADDGCN:
    """ADD-GCN on ResNet-18."""
    return create_head(ADDGCN, "resnet18", **kwargs)


@register_model
def addgcn_tiny(**kwargs: Any) -> ADDGCN:
    """ADD-GCN on the tiny ResNet (CPU tests and the scenes benchmark)."""
    return create_head(ADDGCN, "resnet_tiny", **kwargs)


@register_model
def addgcn_timm(**kwargs: Any) -> ADDGCN:
    """ADD-GCN on a timm backbone: `backbone=NAME` (or `timm:NAME`), e.g. convnext_tiny."""
    return create_head(ADDGCN, None, **kwargs)
