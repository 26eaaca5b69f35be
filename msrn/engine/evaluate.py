"""Scores and metrics for a model on a split, and the `msrn evaluate` command.

Evaluation is exact under torchrun: each process scores a disjoint shard (no padding), the
scores are gathered by image index, and every image is counted exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from msrn import distributed as dist
from msrn.data import DatasetOptions, ImageDataset, MultiLabelData
from msrn.data.loader import build_loader
from msrn.data.transforms import TestTransform
from msrn.engine.losses import LossFn, model_group_loss, objective, soft_margin_loss
from msrn.engine.scores import write_scores
from msrn.errors import setting_up
from msrn.io import atomic_write_json, check_writable
from msrn.metrics import format_metrics, multilabel_metrics, reference_order_average_precision, reference_tuned_metrics
from msrn.models import load_checkpoint, optimize_for_inference, with_tta
from msrn.options import (
    add_options,
    amp_option,
    batch_size_option,
    checkpoint_option,
    device_option,
    exact_option,
    image_size_option,
    option,
    reference_cooccurrence_option,
    reference_word_vectors_option,
    tta_option,
    workers_option,
)

log = logging.getLogger("msrn")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision only when asked for: the default reproduces the fp32 numbers."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: MultiLabelData,
    image_size: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    amp: str = "none",
    desc: str = "eval",
) -> np.ndarray:
    """Logits (N x C, float32) for every image of `data`, gathered across processes in image order."""
    dataset = ImageDataset(data, TestTransform(image_size))
    mine = dist.shard(len(dataset))
    loader = build_loader(Subset(dataset, mine.tolist()), batch_size, shuffle=False, workers=workers, seed=0)
    was_training = model.training
    model.eval()
    indices, rows = [], []
    for images, _, idx in tqdm(loader, desc=desc, leave=False, disable=None if dist.is_main() else True):
        with autocast(device, amp):
            logits = model(images.to(device, non_blocking=True))
        rows.append(logits.float().cpu().numpy())
        indices.append(idx.numpy())
    model.train(was_training)
    c = len(data.labels)
    rows_arr = np.concatenate(rows) if rows else np.zeros((0, c), np.float32)
    idx_arr = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    return dist.gather_rows(idx_arr, rows_arr, len(dataset))


def score_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray | None = None,
    group_loss: float = 0.0,
    loss: LossFn = soft_margin_loss,
) -> dict:
    """docs/design.md §8 metrics from logits and, if given, the metrics at per-label thresholds chosen
    on a validation split; "loss" is the training objective (losses.objective: the run's `loss` plus
    the model's `group_loss`, see model_group_loss), so it compares with the training curve.
    `msrn evaluate` passes no `loss`: it reports the soft-margin objective whatever loss the run used."""
    m = multilabel_metrics(logits, targets, scores_are_logits=True)
    if thresholds is not None:
        at = multilabel_metrics(logits, targets, threshold=thresholds, scores_are_logits=True)
        m["per_label_thresholds"] = {k: at[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    logits_t, targets_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (logits, targets))
    m["loss"] = float(objective(loss, logits_t, targets_t, torch.tensor(group_loss, dtype=torch.float64)))  # in float64
    return m


def reference_tuned_figures(logits: np.ndarray, targets: np.ndarray, split: str) -> dict:
    """The reference code's CP..OF1 with the logit threshold tuned on this split, and its tie-order mAP."""
    tuned = reference_tuned_metrics(logits, targets)
    ap = reference_order_average_precision(logits, targets)
    tuned["mAP_reference_ties"] = None if np.isnan(ap).all() else float(100.0 * np.nanmean(ap))
    tuned["split"] = split
    tuned["note"] = (
        f"threshold on the logits tuned on the {split} split itself, as the reference's code does: "
        "not a fair number; report it only beside the fixed-threshold metrics"
    )
    return tuned


def format_tuned(tuned: dict) -> str:
    """A labelled paragraph of the reference's figures tuned on the evaluated split."""
    k = tuned["top_k"]
    lines = [
        f"Threshold TUNED ON THE {tuned['split'].upper()} SET ITSELF, as the reference's code reports it "
        "(not a fair number):"
    ]
    for name, suffix in (("all labels", ""), (f"top-{k}", f"_top{k}")):
        t = tuned[f"threshold{suffix}"]
        at = "no threshold gave CF1 + OF1 > 0" if t is None else f"logit >= {t:.1f}"
        six = ", ".join(f"{m} {tuned[m + suffix]:.2f}" for m in ("CP", "CR", "CF1", "OP", "OR", "OF1"))
        lines.append(f"  {name}, {at}: {six}")
    ap = tuned["mAP_reference_ties"]
    lines.append(f"  mAP with ties in torch.sort's order (the reference's AP): {'n/a' if ap is None else f'{ap:.2f}'}")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(DatasetOptions):
    """Options of `msrn evaluate`."""

    split: str | None = option(None, "split to evaluate (default: the dataset's test split)")
    json: str | None = option(None, "also write the metrics to this JSON file", metavar="FILE")
    scores: str | None = option(
        None,
        "also write every image's label probabilities to this CSV: a header (image, then the labels in order), "
        "then per image its path and one probability per label",
        metavar="FILE",
    )
    checkpoint: str = checkpoint_option()
    word_vectors: str | None = reference_word_vectors_option()
    cooccurrence: str | None = reference_cooccurrence_option()
    image_size: int | None = image_size_option()
    batch_size: int = batch_size_option(16)
    workers: int = workers_option(2)
    device: str = device_option("auto")
    amp: str = amp_option()
    tta: str = tta_option()
    exact: bool = exact_option()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `msrn evaluate`."""
    add_options(p, EvaluateOptions)


def main(args: argparse.Namespace | EvaluateOptions) -> int:
    """Run `msrn evaluate`: score the split with the checkpoint, print (and write) its metrics."""
    args = EvaluateOptions.from_args(args)
    device = dist.setup(args.device)
    if args.scores and dist.is_main():
        check_writable(Path(args.scores).absolute().parent)  # before the long evaluation, not after it
    split = args.split_name(1)
    data = args.read(split)
    with setting_up():  # a value torch refuses while the model is built and moved: one line, no traceback
        loaded = load_checkpoint(
            args.checkpoint,
            word_vectors=args.word_vectors,
            cooccurrence=args.cooccurrence,
            labels=data.labels,
            dataset=args.dataset,
        )
        net = loaded.model.to(device)
    image_size = args.image_size or loaded.image_size
    group_loss = model_group_loss(net)  # before folding: the folded eval-only copy keeps no group loss
    # without --exact: batch norm folded, channels-last: the same logits to float32 rounding, faster
    model: nn.Module = net if args.exact else optimize_for_inference(net)
    model = with_tta(model, args.tta)
    logits = predict_logits(model, data, image_size, args.batch_size, args.workers, device, args.amp)
    m = score_metrics(logits, data.targets, loaded.thresholds, group_loss)
    # the reference code's figures, threshold tuned on the evaluated split itself: reported here only, labelled
    m["tuned_on_test_set"] = reference_tuned_figures(logits, data.targets, split)
    m.update(
        dataset=args.dataset, split=split, checkpoint=str(args.checkpoint), labels=data.labels, image_size=image_size
    )
    if dist.is_main():
        print(format_metrics(m, data.labels))
        print(format_tuned(m["tuned_on_test_set"]))
        if args.json:
            atomic_write_json(Path(args.json), m)
        if args.scores:
            write_scores(args.scores, data, logits)
    dist.teardown()
    return 0
