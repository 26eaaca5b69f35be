"""ML-GCN (Chen, Wei, Wang and Guo, "Multi-Label Image Recognition with Graph Convolutional Networks", CVPR 2019).

A two-layer graph convolutional network maps the label word vectors Z (C x w) over the label graph to one
classifier per label; the image is its globally max-pooled feature x (B x d):

    A      = binarise(P(j|i) >= tau), re-weighted: p / sum_i A_ij off the diagonal, plus I   (C x C, msrn.labels)
    A_hat  = D^-1/2 A^T D^-1/2,  D = diag(sum_j A_ij)                          (as ML-GCN's gen_adj)
    H      = LeakyReLU_0.2(A_hat Z W1)                                          (C x h)
    W      = A_hat H W2                                                         (C x d, one classifier per label)
    logits = x W^T                                                              (B x C, no bias)

A is the same re-weighted graph as MSRN's (tau 0.4, p 0.25), built from the same co-occurrence counts, and is
not trained (ML-GCN keeps it as a parameter outside its optimiser). The GCN weights are drawn as ML-GCN's:
U(-1/sqrt(out), 1/sqrt(out)); its layers have no bias.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import register_model
from msrn.models.headnet import HeadNetwork, create_head
from msrn.models.msrn import placeholder_vectors


def normalized_adjacency(a: torch.Tensor) -> torch.Tensor:
    """A_hat = D^-1/2 A^T D^-1/2 with D the row sums of A (C x C)."""
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a.t() * d[None, :]


class MLGCN(HeadNetwork):
    family = "mlgcn"
    title = "ML-GCN"
    word_vectors: torch.Tensor  # buffers
    adjacency: torch.Tensor

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        labels: list[str] | None,
        word_vectors: torch.Tensor,
        adjacency: torch.Tensor,
        hidden: int | None = None,
    ):
        super().__init__(backbone, num_classes, labels, {})
        hidden = int(hidden or self.width // 2)  # 1024 on ResNet-101, as ML-GCN's 300 -> 1024 -> 2048
        self.settings["hidden"] = hidden
        vecs = torch.as_tensor(word_vectors, dtype=torch.float32).clone()
        adj = torch.as_tensor(adjacency, dtype=torch.float32).clone()
        if vecs.dim() != 2 or vecs.shape[0] != num_classes or adj.shape != (num_classes, num_classes):
            raise ValueError(
                f"word vectors {tuple(vecs.shape)} and adjacency {tuple(adj.shape)} do not fit {num_classes} labels"
            )
        self.register_buffer("word_vectors", vecs)  # Z: C x w
        self.register_buffer("adjacency", adj)  # A: C x C, before normalisation
        self.gc1 = nn.Parameter(torch.empty(vecs.shape[1], hidden))  # W1: w x h
        self.gc2 = nn.Parameter(torch.empty(hidden, self.width))  # W2: h x d
        for w in (self.gc1, self.gc2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def classifiers(self) -> torch.Tensor:
        """W: C x d, the GCN's per-label classifiers (they depend on the weights alone)."""
        a_hat = normalized_adjacency(self.adjacency)
        h = F.leaky_relu(a_hat @ (self.word_vectors @ self.gc1), 0.2)  # C x h
        return a_hat @ (h @ self.gc2)  # C x d

    def label_representations(self) -> torch.Tensor:
        """W: the GCN's classifiers, one per label."""
        return self.classifiers()

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap.amax((2, 3))  # B x d, global max pooling
        return x @ self.classifiers().t()


def _create(arch: str | None, word_vectors: Any, adjacency: Any, **kwargs: Any) -> MLGCN:
    """ML-GCN on `arch`: label vectors C x w (fixed random ones without them, as MSRN's), the re-weighted graph
    A (C x C; no edges without it). MSRN's pool_ratio and num_groups, which create_model passes to every
    label-graph model, mean nothing here."""
    kwargs.pop("pool_ratio", None)
    kwargs.pop("num_groups", None)
    c = kwargs["num_classes"]
    vectors = placeholder_vectors(c) if word_vectors is None else word_vectors
    adj = np.eye(c, dtype=np.float32) if adjacency is None else adjacency
    return create_head(MLGCN, arch, word_vectors=torch.as_tensor(vectors), adjacency=torch.as_tensor(adj), **kwargs)


@register_model(label_graph=True)
def mlgcn_resnet101(word_vectors: Any = None, adjacency: Any = None, **kwargs: Any) -> MLGCN:
    """ML-GCN on ResNet-101: the paper's model (300 -> 1024 -> 2048)."""
    return _create("resnet101", word_vectors, adjacency, **kwargs)


@register_model(label_graph=True)
def mlgcn_resnet50(word_vectors: Any = None, adjacency: Any = None, **kwargs: Any) -> MLGCN:
    """ML-GCN on ResNet-50."""
    return _create("resnet50", word_vectors, adjacency, **kwargs)


@register_model(label_graph=True)
def mlgcn_resnet18(word_vectors: Any = None, adjacency: Any = None, **kwargs: Any) -> MLGCN:
    """ML-GCN on ResNet-18."""
    return _create("resnet18", word_vectors, adjacency, **kwargs)


@register_model(label_graph=True)
def mlgcn_tiny(word_vectors: Any = None, adjacency: Any = None, **kwargs: Any) -> MLGCN:
    """ML-GCN on the tiny ResNet (CPU tests and the scenes benchmark)."""
    return _create("resnet_tiny", word_vectors, adjacency, **kwargs)


@register_model(label_graph=True)
def mlgcn_timm(word_vectors: Any = None, adjacency: Any = None, **kwargs: Any) -> MLGCN:
    """ML-GCN on a timm backbone: `backbone=NAME` (or `timm:NAME`), e.g. convnext_tiny."""
    return _create(None, word_vectors, adjacency, **kwargs)
