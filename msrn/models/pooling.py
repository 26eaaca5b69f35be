"""The max-pooling baseline: the backbone's last map, global max pooling, one linear layer.

    logits = W max_j x_j + b        (B x C)

Beside `baseline_*` (average pooling + linear), since ML-GCN's own table shows the pooling alone moves VOC mAP
by more than a point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from msrn.models._registry import register_model
from msrn.models.headnet import HeadNetwork, create_head


class MaxPoolLinear(HeadNetwork):
    family = "baseline_max"
    title = "the max-pooling baseline"
    label_shaped = r"fc\.(weight|bias)"

    def __init__(self, backbone: str, num_classes: int, labels: list[str] | None = None):
        super().__init__(backbone, num_classes, labels, {})
        self.fc = nn.Linear(self.width, num_classes)

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(fmap.amax((2, 3)))  # B x d -> B x C

    def label_representations(self) -> torch.Tensor:
        """The rows of the linear layer, one classifier per label."""
        return self.fc.weight


@register_model
def baseline_max_resnet101(**kwargs: Any) -> MaxPoolLinear:
    """Global max pooling and one linear layer on ResNet-101."""
    return create_head(MaxPoolLinear, "resnet101", **kwargs)


@register_model
def baseline_max_resnet50(**kwargs: Any) -> MaxPoolLinear:
    """Global max pooling and one linear layer on ResNet-50."""
    return create_head(MaxPoolLinear, "resnet50", **kwargs)


@register_model
def baseline_max_resnet18(**kwargs: Any) -> MaxPoolLinear:
    """Global max pooling and one linear layer on ResNet-18."""
    return create_head(MaxPoolLinear, "resnet18", **kwargs)


@register_model
def baseline_max_tiny(**kwargs: Any) -> MaxPoolLinear:
    """Global max pooling and one linear layer on the tiny ResNet (CPU tests and the scenes benchmark)."""
    return create_head(MaxPoolLinear, "resnet_tiny", **kwargs)


@register_model
def baseline_max_timm(**kwargs: Any) -> MaxPoolLinear:
    """Global max pooling and one linear layer on a timm backbone: `backbone=NAME` (or `timm:NAME`)."""
    return create_head(MaxPoolLinear, None, **kwargs)
