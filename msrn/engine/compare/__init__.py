"""`msrn compare`: which head? Every registered head on one backbone, trained alike under each recipe over
several seeds, with accuracy, slices and cost side by side.

`study` trains and evaluates the runs (resumable: compare.json keeps each finished run), `recipes` holds the
GCN and transformer families' recipes, `cost` measures weights, FLOPs and time against the bare backbone, and
`report` writes report.md with its plots. Out folder: compare.json, report.md, map_vs_cost.png, slices.png,
runs/RECIPE/HEAD_seedS/ (each a `msrn train` run folder), data/ (scenes) and init/ (the shared backbone draws).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from msrn.engine.compare.recipes import RECIPES
from msrn.engine.compare.report import summarise, write_study_report
from msrn.engine.compare.study import Plan, heads_for, run_study
from msrn.engine.config import PRESETS
from msrn.errors import MSRNError
from msrn.io import atomic_write_json
from msrn.options import AMP_MODES, bounded

# the study's TrainConfig overrides on the command line: flag -> (type, help)
TRAIN_FLAGS: dict[str, tuple[Any, str]] = {
    "epochs": (bounded(int, 1), "epochs of every run (default: the preset's; its lr steps scale with it)"),
    "batch_size": (bounded(int, 1), "batch of every run (default: the preset's)"),
    "image_size": (bounded(int, 32), "input side of every run (default: the preset's)"),
    "pretrained": (str, "backbone weights every head starts from (default: the preset's; none: one seeded draw)"),
    "workers": (bounded(int, 0), "data-loading processes per run"),
    "device": (str, "torch device: auto, cpu, cuda or cuda:N"),
    "amp": (str, "mixed precision on GPU: none, bf16 or fp16"),
}
CHOICES = {"amp": AMP_MODES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="scenes", choices=list(PRESETS), help="dataset and its preset (default scenes)")
    p.add_argument("--data", help="dataset root folder (scenes: generated under --out/data, one per seed)")
    p.add_argument("--out", default="runs/compare", help="study folder: compare.json, report.md, plots, runs/")
    p.add_argument(
        "--backbone",
        help="the backbone, as the registered names end: tiny, resnet18, resnet50, resnet101 (default: the "
        "preset's, tiny for scenes, resnet101 for the paper's data sets)",
    )
    p.add_argument("--heads", nargs="+", help="heads to compare (default: every registered head on --backbone)")
    p.add_argument(
        "--recipes",
        nargs="+",
        default=["gcn", "transformer"],
        choices=RECIPES,
        help="gcn (SGD, soft margin, step schedule: the preset), transformer (AdamW, one-cycle, ASL, EMA), paper "
        "(each head's own, where known); default gcn transformer",
    )
    p.add_argument("--seeds", type=bounded(int, 0), nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument(
        "--val-fraction",
        type=bounded(float, 0, 1, "()"),
        default=0.1,
        help="validation split that selects epochs (> 0)",
    )
    p.add_argument(
        "--scenes-size",
        type=bounded(int, 1),
        nargs=3,
        default=[2000, 600, 128],
        metavar=("TRAIN", "TEST", "SIDE"),
        help="scenes: training images, test images and image side (default 2000 600 128, the demo's)",
    )
    p.add_argument("--timing-rounds", type=bounded(int, 1), default=3, help="interleaved timing rounds (default 3)")
    for name, (kind, text) in TRAIN_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, choices=CHOICES.get(name), help=text)


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.dataset != "scenes" and not args.data:
        raise MSRNError(f"--data is required for --dataset {args.dataset}")
    backbone = args.backbone or str(PRESETS[args.dataset]["model"]).split("_", 1)[1]  # msrn_tiny -> tiny
    heads = args.heads or heads_for(backbone)
    if not heads:
        raise MSRNError(f"no registered head on backbone {backbone!r}")
    train = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    train["val_fraction"] = args.val_fraction
    return Plan(
        out=Path(args.out),
        dataset=args.dataset,
        backbone=backbone,
        heads=tuple(dict.fromkeys(heads)),
        recipes=tuple(dict.fromkeys(args.recipes)),
        seeds=tuple(dict.fromkeys(args.seeds)),
        data=args.data,
        scenes_size=tuple(args.scenes_size),
        train=train,
        timing_rounds=args.timing_rounds,
    )


def main(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    command = "msrn " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else "msrn compare"

    def update(result: dict) -> None:  # after every finished run: summary, JSON and report up to date
        result["summary"] = summarise(result)
        atomic_write_json(plan.out / "compare.json", result)
        write_study_report(plan.out, result, command)

    run_study(plan, progress=lambda line: print(line, flush=True), on_update=update)
    print(f"done: {plan.out / 'report.md'}, {plan.out / 'compare.json'}")
    return 0
