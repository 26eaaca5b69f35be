"""Which weights best.pt holds, and what the run folder reports about them.

Nothing is selected on the test split: best.pt is the best validation epoch when a validation split is carved
from training (--val-fraction), otherwise the last epoch. With --ema both the live and the averaged weights are
evaluated; best.pt holds the better on validation (the averaged ones without a validation split).
metrics.json and ap_per_label.png describe the selected epoch on the test split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from msrn.data import MultiLabelData
from msrn.engine.config import TrainConfig
from msrn.engine.evaluate import predict_logits, score_metrics
from msrn.engine.losses import LossFn, model_group_loss
from msrn.io import atomic_write_json
from msrn.metrics import map_text, per_label_thresholds, sigmoid
from msrn.models import with_tta
from msrn.plots import plot_ap_per_label


@dataclass(frozen=True)
class Evaluation:
    """One set of weights evaluated at an epoch's end."""

    validation: dict | None  # metrics on the validation split; None without one
    thresholds: np.ndarray | None  # per-label thresholds tuned on validation; None unless asked for
    test: dict  # metrics on the test split, at those thresholds

    @property
    def val_map(self) -> float | None:
        """The validation mAP that selects epochs; None without a validation split or a positive in it."""
        return None if self.validation is None else self.validation["mAP"]


@dataclass
class Selected:
    """The epoch whose weights best.pt holds, and why (stored in checkpoints as a dict)."""

    epoch: int
    score: float | None  # its validation mAP, or its test mAP when selected as the last epoch
    selected_by: str  # "validation mAP" or "last epoch"
    thresholds: list[float] | None = None
    weights: str | None = None  # "live" or "ema", when the run keeps both

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.weights is None:
            del d["weights"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Selected | None:
        return cls(**d) if d else None  # a checkpoint written before the first epoch ended holds {}


def history_entry(epoch: int, train_loss: float, seconds: float, results: dict[str, Evaluation]) -> dict:
    """One epoch's row of the history: its training loss and time, and per evaluated weights ("live",
    "ema", prefixed ema_) the validation mAP, the test loss and the test mAP."""
    entry: dict[str, float | None] = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds}
    for which, r in results.items():
        prefix = "" if which == "live" else "ema_"
        if r.validation is not None:
            entry[prefix + "val_mAP"] = r.val_map
        entry.update({prefix + "test_loss": r.test["loss"], prefix + "mAP": r.test["mAP"]})
    return entry


def weights_text(results: dict[str, Evaluation]) -> str:
    """The log line's account of the live and EMA weights' mAP, when both were evaluated."""
    if len(results) < 2:
        return ""
    parts = []
    for which, r in results.items():
        val_map = float("nan") if r.val_map is None else r.val_map  # a split without a positive has no mAP
        val = f"val {val_map:.2f} " if r.validation is not None else ""
        parts.append(f"{which} {val}test {r.test['mAP'] or float('nan'):.2f}")
    return " | mAP " + ", ".join(parts)


def evaluate_splits(
    module: nn.Module,
    cfg: TrainConfig,
    val_data: MultiLabelData | None,
    test_data: MultiLabelData,
    batch_size: int,
    device: torch.device,
    criterion: LossFn,
) -> Evaluation:
    """Validation metrics (None without a validation split), the per-label thresholds tuned on it
    when asked for, and the test metrics at those thresholds, for one set of weights."""
    vm, thresholds = None, None
    group_loss = model_group_loss(module)  # the reported losses are the training objective's
    module = with_tta(module, cfg.tta)
    if val_data is not None:
        vlogits = predict_logits(module, val_data, cfg.image_size, batch_size, cfg.workers, device, cfg.amp, desc="val")
        vm = score_metrics(vlogits, val_data.targets, group_loss=group_loss, loss=criterion)
        if cfg.tune_thresholds:
            thresholds = per_label_thresholds(sigmoid(vlogits.astype(np.float64)), val_data.targets)
    tlogits = predict_logits(module, test_data, cfg.image_size, batch_size, cfg.workers, device, cfg.amp, desc="test")
    return Evaluation(vm, thresholds, score_metrics(tlogits, test_data.targets, thresholds, group_loss, criterion))


def select_weights(results: dict[str, Evaluation], validated: bool, keeps_ema: bool) -> str:
    """Which weights an epoch offers as best.pt: the better on validation (live on a tie); without a
    validation split nothing is picked on the test split, so the EMA weights when the run keeps them."""
    if validated:
        # an evaluation without a validation mAP ranks below any with one
        return max(results, key=lambda k: (results[k].val_map is not None, results[k].val_map or 0.0))
    return "ema" if keeps_ema else "live"


def selected_epoch(epoch: int, which: str, result: Evaluation, keeps_ema: bool) -> Selected:
    """The record of an epoch selected for best.pt with `which` weights."""
    score = result.val_map
    return Selected(
        epoch=epoch,
        score=score if score is not None else result.test["mAP"],
        selected_by="validation mAP" if score is not None else "last epoch",
        thresholds=None if result.thresholds is None else [float(t) for t in result.thresholds],
        weights=which if keeps_ema else None,
    )


def epoch_text(
    epoch: int, epochs: int, train_loss: float, results: dict[str, Evaluation], which: str, seconds: float, kept: bool
) -> str:
    """The log line of an epoch's end: its loss, the selected weights' figures, and * when best.pt takes it."""
    score, tm = results[which].val_map, results[which].test
    val_txt = f" val mAP {score:.2f} |" if score is not None else ""
    return (
        f"epoch {epoch}/{epochs} | loss {train_loss:.4f} |{val_txt} test mAP {map_text(tm)} CF1 {tm['CF1']:.2f} "
        f"OF1 {tm['OF1']:.2f}{weights_text(results)} | {seconds:.0f}s{' *' if kept else ''}"
    )


def write_reports(out: Path, tm: dict, best: Selected, labels: list[str], split: str, dataset: str) -> None:
    """metrics.json (the selected epoch's test metrics, per label too) and ap_per_label.png."""
    report = {k: v for k, v in tm.items()}
    report.update(
        epoch=best.epoch,
        selected_by=best.selected_by,
        split=split,
        dataset=dataset,
        labels=labels,
        ap_by_label=dict(zip(labels, tm["ap_per_label"], strict=True)),
    )
    if best.weights is not None:
        report["weights"] = best.weights
    if best.thresholds is not None:
        report["thresholds_by_label"] = dict(zip(labels, best.thresholds, strict=True))
    atomic_write_json(out / "metrics.json", report)
    plot_ap_per_label(
        tm["ap_per_label"], labels, out / "ap_per_label.png", title=f"AP per label, {split} split, epoch {best.epoch}"
    )
