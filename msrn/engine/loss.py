"""The training objective (design section 7), defined once for training and for the reported test loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def training_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label soft margin loss; VOC difficult (-1) labels count as positive in training."""
    return F.multilabel_soft_margin_loss(logits.float(), (targets != 0).float())


@torch.no_grad()
def model_group_loss(model: nn.Module) -> float:
    """The model's group loss: it depends on the weights only, not on images (0 for the baseline)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return float(model.semantics()[2]) if hasattr(model, "semantics") else 0.0
