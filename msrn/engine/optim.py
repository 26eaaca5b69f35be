"""Optimisers and learning-rate schedules of a training run, from its TrainConfig.

Two families of recipes meet here: the GCN heads' (MSRN, ML-GCN: SGD with momentum, the rate dropped at
fixed epochs) and the transformer heads' (Query2Label, ML-Decoder, ASL: AdamW under a one-cycle schedule,
stepped every optimiser step). Both take the model's parameter groups, each with its own rate.
"""

from __future__ import annotations

from typing import Any

import torch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "onecycle")
# one-cycle as ASL, ML-Decoder and Query2Label train: the rate rises over the first 20% of the steps
ONECYCLE_PCT_START = 0.2


def _fused(build: Any) -> torch.optim.Optimizer:
    """build(fused=True), the one-pass kernel where this torch and device have one, else torch's default."""
    try:
        return build(fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the kernel
        return build(fused=None)


def make_optimizer(
    groups: list[dict], optimizer: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with momentum and (L2) weight decay, or AdamW with decoupled weight decay, over `groups`.

    Fused SGD is the same update in one pass per tensor, which matters for fc1's 264M weights on COCO
    (the measurement is in BENCHMARKS.md).
    """
    if optimizer == "sgd":
        return _fused(
            lambda fused: torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
        )
    if optimizer == "adamw":
        return _fused(lambda fused: torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused))
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    lr_steps: tuple[int, ...],
    lr_gamma: float,
    total_steps: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """`step`: each group's rate times lr_gamma at each epoch of lr_steps (stepped once per epoch);
    `onecycle`: each group's rate is its peak, reached after ONECYCLE_PCT_START of total_steps optimiser
    steps, then annealed by a cosine (stepped once per optimiser step)."""
    if schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(lr_steps), lr_gamma)
    if schedule == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=max(1, total_steps), pct_start=ONECYCLE_PCT_START
        )
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
