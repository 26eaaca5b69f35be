"""Test-time augmentation (`--tta flip`): the logits of an image and of its horizontal mirror, averaged.

The training transform flips images at random, so the mirror is an image the model was trained
to read; averaging the two costs a second forward pass and usually steadies the scores.
"""

from __future__ import annotations

import torch
from torch import nn

from msrn.errors import MSRNError
from msrn.options import TTA_MODES


class FlipAverage(nn.Module):
    """Wraps a model: logits = (model(x) + model(x mirrored left-right)) / 2, for N x 3 x H x W input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The averaged logits (two forward passes, so each image's result is independent of the batch)."""
        return (self.model(x) + self.model(torch.flip(x, dims=(-1,)))) / 2


def with_tta(model: nn.Module, mode: str = "none") -> nn.Module:
    """The model itself for mode "none", wrapped in FlipAverage for "flip"."""
    if mode == "none":
        return model
    if mode == "flip":  # in the wrapped model's mode, so restoring it never switches an eval-only model to train
        return FlipAverage(model).train(model.training)
    raise MSRNError(f"--tta must be one of {', '.join(TTA_MODES)}, not {mode!r}")
