"""MSRN's classifiers over the attended label and group semantics (B x (C+K) x SD, S depths read).

"mlp" is the paper's: tanh, one Linear over all (C+K) x SD features (fc1), LeakyReLU, fc2. Its weights grow
with C x (C+K), which is what limits the label vocabulary. "elementwise" is the one the reference code keeps
commented out beside it (with its parameters W and B): each label's group feature is its groups' features
mixed by the assignment S (C x K), it is joined to the label's own feature, tanh, and one weight vector per
label scores it: logit_c = <W_c, x_c> + B_c. Its weights grow linearly with C.

A head is MSRN's `head` (keys `head.fc1.*` or `head.W`, `head.B`); the reference's top-level names are mapped
when its files load (_reference_layout.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import register_head

# Every head takes (num_classes=C, rows=C+K, width=S x D, hidden, groups) and maps B x (C+K) x SD attended semantics
# (and the C x K assignment, None without groups) to B x C logits.


@register_head("mlp")
class MLPHead(nn.Module):
    """The paper's classifier: fc2(LeakyReLU_0.01(fc1(tanh(features flattened))))."""

    def __init__(self, num_classes: int, rows: int, width: int, hidden: int, groups: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(rows * width, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, attended: torch.Tensor, assign: torch.Tensor | None = None) -> torch.Tensor:
        # attended: B x (C+K) x SD -> B x C
        h = torch.tanh(attended).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(h), 0.01))


@register_head("elementwise")
class ElementwiseHead(nn.Module):
    """The reference's element-wise classifier: x_c = tanh([V_c ; sum_k S_ck G_k]), logit_c = <W_c, x_c> + B_c."""

    def __init__(self, num_classes: int, rows: int, width: int, hidden: int = 0, groups: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.W = nn.Parameter(torch.empty(num_classes, width * (2 if groups else 1)))
        self.B = nn.Parameter(torch.empty(num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(width), 1/sqrt(width)) for W and B alike, as the reference draws them."""
        bound = 1.0 / math.sqrt(self.W.shape[1])
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.B, -bound, bound)

    def forward(self, attended: torch.Tensor, assign: torch.Tensor | None = None) -> torch.Tensor:
        # attended: B x (C+K) x SD, assign: C x K (None without group semantics) -> B x C
        labels = attended[:, : self.num_classes]  # B x C x SD
        if assign is not None:
            groups = torch.matmul(assign, attended[:, self.num_classes :])  # (C x K) @ (B x K x SD) -> B x C x SD
            labels = torch.cat([labels, groups], -1)  # B x C x 2SD
        return (self.W * torch.tanh(labels)).sum(-1) + self.B
