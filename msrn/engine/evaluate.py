"""Scores and metrics for a model on a split, and the `msrn evaluate` command.

Evaluation is exact under torchrun: each process scores a disjoint shard (no padding), the
scores are gathered by image index, and every image is counted exactly once.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from msrn import distributed as dist
from msrn.data import DATASETS, DEFAULT_SPLITS, ImageDataset, MultiLabelData, build_dataset
from msrn.data.loader import build_loader
from msrn.data.transforms import TestTransform

log = logging.getLogger("msrn")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision only when asked for: the default reproduces the fp32 numbers."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_scores(
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


def score_metrics(logits: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None = None) -> dict:
    """Spec section 8 metrics from logits and, if given, the metrics at per-label thresholds chosen
    on a validation split."""
    from msrn.metrics import multilabel_metrics

    m = multilabel_metrics(logits, targets, scores_are_logits=True)
    if thresholds is not None:
        at = multilabel_metrics(logits, targets, threshold=thresholds, scores_are_logits=True)
        m["per_label_thresholds"] = {k: at[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    t = np.clip(targets, 0, 1).astype(np.float64)
    m["loss"] = float(np.mean(np.logaddexp(0, logits) - logits * t))  # multi-label soft margin
    return m


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", required=True, help="dataset root folder (the CSV file for --dataset csv)")
    p.add_argument("--checkpoint", required=True, help="an msrn checkpoint, or a reference *_checkpoint.pth.tar")
    p.add_argument("--split", help="split to evaluate (default: the dataset's test split)")
    p.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    p.add_argument("--word-vectors", help="reference checkpoints: the word-vector pickle, e.g. voc_glove_word2vec.pkl")
    p.add_argument("--cooccurrence", help="reference checkpoints: the co-occurrence pickle, e.g. voc_adj.pkl")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's (448 for reference checkpoints)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="mixed precision (GPU): an explicit trade of accuracy for speed; default exact fp32")
    exact = p.add_mutually_exclusive_group()
    exact.add_argument("--exact", action="store_true",
                       help="run the network as written instead of the default batch-norm-folded, channels-last "
                            "copy (the same logits to ~1e-6, faster on CPU; see BENCHMARKS.md)")
    exact.add_argument("--fast", action="store_true", help="the folded model: the default (kept for old command lines)")


def main(args: argparse.Namespace) -> int:
    from msrn.checkpoint import load_model
    from msrn.io import atomic_write_json
    from msrn.metrics import format_metrics, tune_thresholds

    device = dist.setup(args.device)
    split = args.split or DEFAULT_SPLITS[args.dataset][1]
    data = build_dataset(args.dataset, args.data, split)
    model = load_model(args.checkpoint, word_vectors=args.word_vectors, cooccurrence=args.cooccurrence,
                       labels=data.labels).to(device)
    image_size = args.image_size or model.image_size
    thresholds = getattr(model, "thresholds", None)
    if not args.exact:  # batch norm folded, channels-last: the same logits to ~1e-6, faster
        from msrn.models.fuse import optimize_for_inference

        model = optimize_for_inference(model)
    logits = predict_scores(model, data, image_size, args.batch_size, args.workers, device, args.amp)
    m = score_metrics(logits, data.targets, None if thresholds is None else thresholds.cpu().numpy())
    # the reference's number, tuned on the evaluated split itself: reported here only, labelled
    m["tuned_on_this_split"] = tune_thresholds(logits, data.targets, scores_are_logits=True)
    m.update(dataset=args.dataset, split=split, checkpoint=str(args.checkpoint), labels=data.labels,
             image_size=image_size)
    if dist.is_main():
        print(format_metrics(m, data.labels))
        tuned = m["tuned_on_this_split"]
        print(f"(threshold tuned on this {split} split itself, as the reference reports it: "
              f"{tuned['threshold']:.2f} -> CF1 {tuned['CF1']:.2f}, OF1 {tuned['OF1']:.2f}; not a fair number)")
        if args.json:
            atomic_write_json(Path(args.json), m)
    dist.teardown()
    return 0

