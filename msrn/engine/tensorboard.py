"""TensorBoard event files of a run, written when the `tensorboard` extra is installed (nothing otherwise).

Into <run folder>/tensorboard: per optimiser step `train/loss` and `train/lr/<group>` (backbone,
head); per epoch `epoch/train_loss`, `test/{mAP,CF1,OF1}`, `val/{mAP,CF1,OF1}` with a validation
split, the same under `ema_test/` and `ema_val/` with --ema, and the AP-per-label figure
`test/ap_per_label` (`ema_test/ap_per_label`). Every event's step is the optimiser step count, so
per-step and per-epoch curves share one axis and a resumed run can drop what came after its
checkpoint (purge_step): a killed and resumed run leaves one curve, not two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msrn.plots import ap_per_label_figure, figure_pixels

INSTALL_HINT = (
    "TensorBoard: with the tensorboard extra installed (pip install 'msrn[tensorboard]'), every run "
    "also writes event files to <out>/tensorboard; view them with `tensorboard --logdir <out>`."
)
EPOCH_METRICS = ("mAP", "CF1", "OF1")


class Board:
    """The run's event writer: one call per optimiser step and one per epoch."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def step(self, global_step: int, loss: float, optimizer: torch.optim.Optimizer) -> None:
        """The step's training loss and every parameter group's learning rate."""
        self.writer.add_scalar("train/loss", loss, global_step)
        for i, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"train/lr/{group.get('name', i)}", group["lr"], global_step)

    def epoch(
        self,
        global_step: int,
        train_loss: float,
        results: dict[str, tuple[dict | None, dict]],
        labels: list[str],
        split: str,
    ) -> None:
        """The epoch's train loss, and for each weights ("live", "ema") its validation metrics (or
        None) and test metrics, with the test split's AP-per-label figure."""
        self.writer.add_scalar("epoch/train_loss", train_loss, global_step)
        for which, (val, test) in results.items():
            prefix = "" if which == "live" else f"{which}_"
            for part, metrics in (("val", val), ("test", test)):
                if metrics is None:
                    continue
                for key in EPOCH_METRICS:
                    if metrics[key] is not None:
                        self.writer.add_scalar(f"{prefix}{part}/{key}", metrics[key], global_step)
            title = f"AP per label, {split} split, step {global_step}" + (f" ({which} weights)" if prefix else "")
            image = figure_pixels(ap_per_label_figure(test["ap_per_label"], labels, title=title))
            self.writer.add_image(f"{prefix}test/ap_per_label", image, global_step, dataformats="HWC")
        self.writer.flush()

    def flush(self) -> None:
        """Write the pending events, so those up to a checkpoint survive a kill."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def open_board(folder: Path, purge_step: int) -> Board | None:
    """A Board writing into folder, dropping earlier events at steps >= purge_step; None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: the `tensorboard` extra
    except ImportError:
        return None
    return Board(SummaryWriter(str(folder), purge_step=purge_step))
