"""The baselines: a backbone with global average pooling and a linear (or MLP) head, no label semantics.

baseline_mlp_tiny's 1.00M head weights match msrn_tiny's head at 16 labels (0.99M, the built-in scenes
benchmark), to tell capacity from structure.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import register_model
from msrn.models.resnet import ResNet


class PlainClassifier(nn.Module):
    """The backbone alone with global average pooling and a linear layer: the demo's baseline.

    With `hidden` > 0 the head is an MLP instead (Linear, LeakyReLU 0.01 as in MSRN's classifier,
    Linear), a baseline with about MSRN's head capacity but none of its structure.
    """

    model_name = ""  # the registered name it was built under (set by the registry; checkpoints record it)

    def __init__(self, backbone: str, num_classes: int, labels: list[str] | None = None, hidden: int = 0):
        super().__init__()
        self.backbone = ResNet(backbone)
        width = self.backbone.channels[-1]
        self.fc_hidden = nn.Linear(width, hidden) if hidden else None
        self.fc = nn.Linear(hidden or width, num_classes)
        self.label_names = list(labels or [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W -> logits B x C."""
        h = self.backbone(x)
        if self.fc_hidden is not None:
            h = F.leaky_relu(self.fc_hidden(h), 0.01)
        return self.fc(h)

    @property
    def hidden(self) -> int:
        """Width of the MLP head's hidden layer (0: a linear head)."""
        return 0 if self.fc_hidden is None else self.fc_hidden.out_features

    @property
    def labels(self) -> list[str]:
        return self.label_names or [str(i) for i in range(self.fc.out_features)]

    def label_representations(self) -> torch.Tensor:
        """C x D: the rows of the last linear layer, one classifier per label (as ML-GCN's are)."""
        return self.fc.weight

    def param_groups(self, lr: float, lr_backbone: float) -> list[dict]:
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": list(self.backbone.parameters()), "lr": lr_backbone, "name": "backbone"},
            {"params": head, "lr": lr, "name": "head"},
        ]


def _create_baseline(
    backbone: str, hidden: int, num_classes: int, labels: list[str] | None, **settings: Any
) -> PlainClassifier:
    """A baseline on `backbone`; it takes no label inputs and no MSRN settings."""
    if settings:
        raise ValueError(f"a baseline has no MSRN head: {', '.join(sorted(settings))} do not apply")
    return PlainClassifier(backbone, num_classes, labels, hidden=hidden)


@register_model
def baseline_resnet101(**kwargs: Any) -> PlainClassifier:
    """ResNet-101, global pooling, one linear layer."""
    return _create_baseline("resnet101", 0, **kwargs)


@register_model
def baseline_resnet50(**kwargs: Any) -> PlainClassifier:
    """ResNet-50, global pooling, one linear layer."""
    return _create_baseline("resnet50", 0, **kwargs)


@register_model
def baseline_resnet18(**kwargs: Any) -> PlainClassifier:
    """ResNet-18, global pooling, one linear layer."""
    return _create_baseline("resnet18", 0, **kwargs)


@register_model
def baseline_tiny(**kwargs: Any) -> PlainClassifier:
    """The tiny ResNet of msrn_tiny, global pooling, one linear layer."""
    return _create_baseline("resnet_tiny", 0, **kwargs)


@register_model
def baseline_mlp_tiny(**kwargs: Any) -> PlainClassifier:
    """The tiny ResNet with an MLP head of about msrn_tiny's head capacity (6912 hidden units)."""
    return _create_baseline("resnet_tiny", 6912, **kwargs)
