"""`msrn compare`: which head? Every registered head on one backbone, trained alike under each recipe over
several seeds, with accuracy, slices and cost side by side.

`study` trains and evaluates the runs (resumable: compare.json keeps each finished run) under the recipes of
msrn.engine.recipes, `cost` measures weights, FLOPs and time against the bare backbone, and `report` writes
report.md with its plots. Out folder: compare.json, report.md, map_vs_cost.png, slices.png,
runs/RECIPE/HEAD_seedS/ (each a `msrn train` run folder), data/ (scenes) and init/ (the shared backbone draws).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from msrn.engine.compare.report import summarise, write_study_report
from msrn.engine.compare.study import Plan, heads_for, run_study
from msrn.engine.config import PRESETS
from msrn.engine.recipes import RECIPES
from msrn.errors import MSRNError
from msrn.io import atomic_write_json
from msrn.options import AMP_MODES, MIN_IMAGE_SIZE, Options, add_options, option

# the study's TrainConfig overrides: CompareOptions fields given to every run when set
TRAIN_FLAGS = ("epochs", "batch_size", "image_size", "pretrained", "workers", "device", "amp")


@dataclass(frozen=True, kw_only=True)
class CompareOptions(Options):
    """Options of `msrn compare`."""

    dataset: str = option("scenes", "dataset and its preset (default scenes)", choices=tuple(PRESETS))
    data: str | None = option(None, "dataset root folder (scenes: generated under --out/data, one per seed)")
    out: str = option("runs/compare", "study folder: compare.json, report.md, plots, runs/")
    backbone: str | None = option(
        None,
        "the backbone, as the registered names end: tiny, resnet18, resnet50, resnet101 (default: the preset's, "
        "tiny for scenes, resnet101 for the paper's data sets)",
    )
    heads: tuple[str, ...] | None = option(None, "heads to compare (default: every registered head on --backbone)")
    recipes: tuple[str, ...] = option(
        ("gcn", "transformer"),
        "gcn (SGD, soft margin, step schedule: the preset), transformer (AdamW, one-cycle, ASL, EMA), paper "
        "(each head's own, where known); default gcn transformer",
        choices=tuple(RECIPES),
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds (default 0 1 2)", low=0)
    val_fraction: float = option(0.1, "validation split that selects epochs (> 0)", low=0, high=1, bounds="()")
    scenes_size: tuple[int, ...] = option(
        (2000, 600, 128),
        "scenes: training images, test images and image side (default 2000 600 128, the demo's)",
        low=1,
        count=3,
        metavar=("TRAIN", "TEST", "SIDE"),
    )
    timing_rounds: int = option(3, "interleaved timing rounds (default 3)", low=1)
    epochs: int | None = option(None, "epochs of every run (default: the preset's; its lr steps scale with it)", low=1)
    batch_size: int | None = option(None, "batch of every run (default: the preset's)", low=1)
    image_size: int | None = option(None, "input side of every run (default: the preset's)", low=MIN_IMAGE_SIZE)
    pretrained: str | None = option(
        None, "backbone weights every head starts from (default: the preset's; none: one seeded draw)"
    )
    workers: int | None = option(None, "data-loading processes per run", low=0)
    device: str | None = option(None, "torch device: auto, cpu, cuda or cuda:N")
    amp: str | None = option(None, "mixed precision on GPU: none, bf16 or fp16", choices=AMP_MODES)

    def check(self) -> None:
        if self.dataset != "scenes" and not self.data:
            raise MSRNError(f"--data is required for --dataset {self.dataset}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `msrn compare`."""
    add_options(p, CompareOptions)


def plan_from_args(args: CompareOptions) -> Plan:
    """The study the options describe."""
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
        scenes_size=(args.scenes_size[0], args.scenes_size[1], args.scenes_size[2]),  # three, as declared
        train=train,
        timing_rounds=args.timing_rounds,
    )


def main(args: argparse.Namespace | CompareOptions) -> int:
    """Run `msrn compare`: every run of the study, then its summary, compare.json and report.md."""
    plan = plan_from_args(CompareOptions.from_args(args))
    command = "msrn " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else "msrn compare"

    def update(result: dict) -> None:  # after every finished run: summary, JSON and report up to date
        result["summary"] = summarise(result)
        atomic_write_json(plan.out / "compare.json", result)
        write_study_report(plan.out, result, command)

    run_study(plan, progress=lambda line: print(line, flush=True), on_update=update)
    print(f"done: {plan.out / 'report.md'}, {plan.out / 'compare.json'}")
    return 0
