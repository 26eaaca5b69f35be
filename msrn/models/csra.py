"""CSRA: class-specific residual attention (Zhu and Wu, "Residual Attention: A Simple but Effective Method for
Multi-Label Recognition", ICCV 2021).

Each label c has one weight vector m_c per head; it scores every position j of the feature map X:

    s_c(j) = m_c^T x_j / ||m_c||                                  (cosine-like score, B x C x hw)
    g_c    = 1/hw sum_j s_c(j)                                     (the average-pooled, "base" logit)
    a_c(j) = softmax_j(T s_c(j))                                   (class-specific attention, temperature T)
    f_c    = g_c + lambda * sum_j a_c(j) s_c(j)                    (residual attention)

T = infinity makes the attention term max_j s_c(j). H heads with temperatures T_1..T_H are summed:
logit_c = sum_h f_c^(h). The paper's temperature sets: 1 head (1), 2 (1, inf), 4 (1, 2, 4, inf),
6 (1..5, inf), 8 (1..7, inf); COCO uses 4 heads and lambda 0.5, VOC 1 head and lambda 0.1.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from msrn.models._registry import register_model
from msrn.models.headnet import HeadNetwork, create_head

TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}
# the published settings per data set: number of heads and lambda
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "coco2014": {"num_heads": 4, "lam": 0.5},
    "voc2007": {"num_heads": 1, "lam": 0.1},
}


class CSRA(HeadNetwork):
    family = "csra"
    title = "CSRA"
    explainable = True
    label_shaped = r"heads\.\d+\.weight"

    def __init__(
        self, backbone: str, num_classes: int, labels: list[str] | None = None, num_heads: int = 4, lam: float = 0.5
    ):
        if num_heads not in TEMPERATURES:
            sets = ", ".join(map(str, TEMPERATURES))
            raise ValueError(f"num_heads must be one of {sets} (CSRA's temperature sets), not {num_heads}")
        super().__init__(backbone, num_classes, labels, {"num_heads": int(num_heads), "lam": float(lam)})
        self.temperatures = TEMPERATURES[num_heads]
        self.lam = float(lam)
        # m_c of each head as a 1x1 convolution without bias: weight C x d x 1 x 1
        self.heads = nn.ModuleList(nn.Conv2d(self.width, num_classes, 1, bias=False) for _ in self.temperatures)

    def convs(self) -> list[nn.Conv2d]:
        return [cast(nn.Conv2d, conv) for conv in self.heads]

    def scores(self, conv: nn.Conv2d, fmap: torch.Tensor) -> torch.Tensor:
        """s_c(j) of one head: B x C x hw."""
        norm = conv.weight.flatten(1).norm(dim=1)  # C
        return conv(fmap).flatten(2) / norm[:, None]

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        logits = fmap.new_zeros(())
        for conv, t in zip(self.convs(), self.temperatures, strict=True):
            s = self.scores(conv, fmap)  # B x C x hw
            base = s.mean(-1)  # B x C
            if math.isinf(t):
                att = s.amax(-1)
            else:
                att = (torch.softmax(t * s, dim=-1) * s).sum(-1)
            logits = logits + base + self.lam * att
        return logits

    def label_representations(self) -> torch.Tensor:
        """m_c of the first head: one classifier per label."""
        return self.convs()[0].weight.flatten(1)

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """a_c of the first head (T = 1): B x C x h x w."""
        s = self.scores(self.convs()[0], fmap)
        return torch.softmax(self.temperatures[0] * s, dim=-1).reshape(*s.shape[:2], *fmap.shape[2:])


@register_model
def csra_resnet101(**kwargs: Any) -> CSRA:
    """CSRA on ResNet-101: the paper's model (COCO: 4 heads, lambda 0.5; VOC: 1 head, 0.1)."""
    return create_head(CSRA, "resnet101", **kwargs)


@register_model
def csra_resnet50(**kwargs: Any) -> CSRA:
    """CSRA on ResNet-50."""
    return create_head(CSRA, "resnet50", **kwargs)


@register_model
def csra_resnet18(**kwargs: Any) -> CSRA:
    """CSRA on ResNet-18."""
    return create_head(CSRA, "resnet18", **kwargs)


@register_model
def csra_tiny(**kwargs: Any) -> CSRA:
    """CSRA on the tiny ResNet (CPU tests and the scenes benchmark)."""
    return create_head(CSRA, "resnet_tiny", **kwargs)


@register_model
def csra_timm(**kwargs: Any) -> CSRA:
    """CSRA on a timm backbone: `backbone=NAME` (or `timm:NAME`), e.g. convnext_tiny."""
    return create_head(CSRA, None, **kwargs)
