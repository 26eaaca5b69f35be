"""Exponential moving average of the weights (`--ema DECAY`), as ASL, timm and mmpretrain train.

Built on torch's AveragedModel with its EMA averaging function and use_buffers=True, so the
BatchNorm running statistics are averaged with the weights. The first update copies the model;
update n then blends with decay_n = decay * (1 - exp(-n / warmup)) (`--ema-warmup`, in optimiser
steps; 0: decay from the start), so early random weights are soon forgotten on short runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_decay(decay: float, warmup: int, n: int) -> float:
    """The decay of update n (n >= 1 models averaged before it) under the warm-up ramp."""
    return decay if warmup <= 0 else decay * (1.0 - math.exp(-n / warmup))


Tensors = tuple[torch.Tensor, ...] | list[torch.Tensor]  # what AveragedModel hands its averaging function


class WeightEMA:
    """An averaged copy of a model's weights and buffers, updated after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float, warmup: int = 0) -> None:
        self.decay, self.warmup = float(decay), int(warmup)
        self.averaged = AveragedModel(model, multi_avg_fn=self._blend, use_buffers=True)
        self.averaged.eval()

    def _blend(self, averaged: Tensors, current: Tensors, n: torch.Tensor | int) -> None:
        """torch's EMA step at this update's decay (AveragedModel calls it once per dtype group)."""
        get_ema_multi_avg_fn(ema_decay(self.decay, self.warmup, int(n)))(averaged, current, n)

    @property
    def module(self) -> nn.Module:
        """The averaged network, the same architecture as the trained one."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights and buffers into the average."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, buffers and update count (for last.pt)."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict returned, strictly."""
        self.averaged.load_state_dict(state, strict=True)
