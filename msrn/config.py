"""One typed configuration for training and evaluation, shared by the CLI and the Python API.

Dataset presets carry the paper's hyper-parameters (design section 7), so a user names the
dataset and the data path and nothing else. Every field can be overridden from the CLI.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from msrn.errors import MSRNError


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to the run folder as config.json."""

    dataset: str = "synthetic"
    data: str = ""
    out: str = "runs/msrn"
    model: str = "msrn_resnet101"
    pretrained: str | None = None  # ImageNet weights for the backbone: a file, a URL, or "imagenet"
    image_size: int = 448
    crop_scales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6)  # the multi-scale crop's sides, x the shorter side
    epochs: int = 30
    batch_size: int = 16  # the global batch (all processes, one optimiser step)
    lr: float = 0.1  # the head (everything outside the backbone)
    lr_backbone: float = 0.01  # the backbone and its conv_buffer layers, as in the reference
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[int, ...] = (20,)  # epochs at which both learning rates are multiplied by lr_gamma
    lr_gamma: float = 0.1
    max_grad_norm: float | None = None  # clip the gradient norm; None = off (the reference's clip runs before
    # backward and so clips nothing: its effective recipe has no clipping)
    pool_ratio: float = 0.2  # K = int(pool_ratio * C) label groups
    # ablation switches of the MSRN head (the paper's model: all three depths, groups and graph on)
    depths: tuple[int, ...] = (1, 2, 3)  # which depths the head reads: any of 1 (layer2), 2 (layer3), 3 (layer4)
    group_semantics: bool = True  # global group semantics (graph pooling into K groups)
    label_graph: bool = True  # the co-occurrence graph; off: the GAT layers see an identity adjacency
    word_vectors: str | None = None  # vector source: None/"ngram", "encoder", a GloVe/fastText file, a .pkl
    name_map: str | None = None  # label=words file for names missing from a vector file
    cooccurrence: str | None = None  # a reference {'adj','nums'} pickle instead of counting the training split
    tau: float = 0.4
    train_split: str | None = None  # None: the dataset's default
    test_split: str | None = None
    val_fraction: float = 0.0  # carve a validation split from training; best.pt is then chosen on it
    tune_thresholds: bool = False  # per-label thresholds from the validation split, stored in checkpoints
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: str = "none"  # none, bf16, fp16: mixed precision, an explicit choice
    save_every: int = 200  # also write last.pt every N optimiser steps, so a kill loses at most N steps
    grad_accum: int = 1  # micro-batches per optimiser step (batch_size is split across them)
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    on_error: str = "stop"  # unreadable training image: stop, or skip it (counted and logged)
    resume: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        d["depths"] = list(self.depths)
        d["crop_scales"] = list(self.crop_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MSRNError(f"unknown configuration keys: {', '.join(unknown)}")
        d = dict(d)
        for key, kind in (("lr_steps", int), ("depths", int), ("crop_scales", float)):
            if key in d:
                d[key] = tuple(kind(s) for s in d[key])
        return cls(**d)

    def model_switches(self) -> dict[str, Any]:
        """The ablation switches as MSRNConfig overrides: empty for the paper's model, so baselines take them."""
        switches = {"depths": tuple(self.depths), "group_semantics": self.group_semantics,
                    "label_graph": self.label_graph}
        return {} if switches == _FULL_MODEL else switches

    def validate(self) -> None:
        if self.pretrained is not None and self.pretrained.strip().lower() in ("", "none"):
            self.pretrained = None  # `--pretrained none` trains the backbone from scratch
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 32:
            raise MSRNError("epochs and batch-size must be >= 1 and image-size >= 32")
        if self.model.startswith("msrn") and self.image_size < 64:  # stride-32 features, then a 2x2 pool
            raise MSRNError(f"--model {self.model} needs --image-size >= 64, not {self.image_size}")
        if not self.crop_scales or not all(0 < x <= 1 for x in self.crop_scales):
            raise MSRNError(f"--crop-scales must be fractions in (0, 1], not {list(self.crop_scales)}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise MSRNError(f"--amp must be none, bf16 or fp16, not {self.amp!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise MSRNError(f"--val-fraction must be in [0, 1), not {self.val_fraction}")
        if self.tune_thresholds and self.val_fraction <= 0:
            raise MSRNError("--tune-thresholds needs a validation split (--val-fraction > 0): never the test split")
        if self.workers < 0 or self.save_every < 0:
            raise MSRNError(f"--workers ({self.workers}) and --save-every ({self.save_every}) must be >= 0")
        if self.on_error not in ("stop", "skip"):
            raise MSRNError(f"--on-error must be stop or skip, not {self.on_error!r}")
        if not self.depths or sorted(set(self.depths)) != sorted(self.depths) or not set(self.depths) <= {1, 2, 3}:
            raise MSRNError(f"--depths must be distinct values among 1, 2, 3, not {list(self.depths)}")
        self.depths = tuple(sorted(self.depths))
        if self.model_switches() and not self.model.startswith("msrn"):
            raise MSRNError(f"--depths, --no-group-semantics and --no-label-graph change the MSRN head; "
                            f"{self.model} has none")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise MSRNError(f"--grad-accum {self.grad_accum} must divide --batch-size {self.batch_size}")


_FULL_MODEL = {"depths": (1, 2, 3), "group_semantics": True, "label_graph": True}
_PAPER = dict(model="msrn_resnet101", pretrained="imagenet", image_size=448, batch_size=16, lr=0.1,
              lr_backbone=0.01, epochs=30, lr_steps=(20,))
# The paper's code asks for 20 epochs with a step at 30 and then runs 200 epochs selecting on the
# test set; these presets state a schedule and select nothing on the test set.
PRESETS: dict[str, dict[str, Any]] = {
    "voc2007": dict(_PAPER, pool_ratio=0.2),
    "coco2014": dict(_PAPER, pool_ratio=0.05),
    "nuswide": dict(_PAPER, pool_ratio=0.05),
    "apparel": dict(_PAPER, pool_ratio=0.2, epochs=20, lr_steps=(15,)),
    "csv": dict(_PAPER, pool_ratio=0.2, val_fraction=0.1),
    # the built-in demo: a tiny backbone from scratch on 64 px images, minutes on a CPU
    "synthetic": dict(model="msrn_tiny", pretrained=None, image_size=64, batch_size=32, lr=0.1,
                      lr_backbone=0.1, epochs=12, lr_steps=(9,), pool_ratio=0.2, workers=1, max_grad_norm=10.0),
    # the built-in benchmark (msrn demo) on 128 px scenes: labels there hang on small objects anywhere in the
    # frame, which the multi-scale crop would cut away while keeping their labels, so only flips augment
    "scenes": dict(model="msrn_tiny", pretrained=None, image_size=128, batch_size=32, lr=0.1, lr_backbone=0.1,
                   epochs=14, lr_steps=(11,), pool_ratio=0.2, workers=1, max_grad_norm=10.0, crop_scales=(1.0,)),
}


def preset_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The dataset's preset with the given fields replaced (None values are ignored)."""
    if dataset not in PRESETS:
        raise MSRNError(f"unknown dataset {dataset!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[dataset], **{k: v for k, v in overrides.items() if v is not None}, "dataset": dataset}
    cfg = TrainConfig.from_dict(values)
    cfg.validate()
    return cfg


__all__ = ["TrainConfig", "PRESETS", "preset_config"]


HELP: dict[str, str] = {
    "dataset": "dataset kind; its preset carries the paper's hyper-parameters",
    "data": "dataset root folder (the CSV file for --dataset csv)",
    "out": "run folder: last.pt, best.pt, metrics.json, config.json, log.txt, plots",
    "model": "registered model name (msrn_resnet101, msrn_resnet50, msrn_resnet18, msrn_tiny, baseline_*)",
    "pretrained": "ImageNet weights for the backbone: a file, a URL, 'imagenet' (torchvision's file) or 'none'",
    "word_vectors": "label vectors: 'ngram' (built-in), 'encoder', a GloVe/fastText text file, or a .pkl",
    "cooccurrence": "use a reference {'adj','nums'} pickle instead of counting the training split",
    "batch_size": "global batch per optimiser step (all processes together)",
    "lr": "learning rate of the head", "lr_backbone": "learning rate of the backbone",
    "lr_steps": "epochs at which the learning rates drop by --lr-gamma",
    "val_fraction": "carve this fraction of training images as a validation split; best.pt is chosen on it",
    "max_grad_norm": "clip the gradient norm at this value (default off, as the reference's effective recipe); "
                     "0 turns clipping off",
    "save_every": "also write last.pt every N optimiser steps (0: only at epoch ends)",
    "crop_scales": "training crop sides as fractions of the shorter image side, one drawn per image "
                   "(the reference's multi-scale crop: 1.0 0.9 0.8 0.7 0.6)",
    "amp": "mixed precision on GPU: none (default, exact fp32), bf16 or fp16",
    "resume": "resume from a checkpoint; with no file, from last.pt in the run folder",
    "on_error": "unreadable training image: stop, or skip it (counted and logged)",
    "depths": "ablation: the depths the MSRN head reads, any of 1 (after layer2), 2 (layer3), 3 (layer4); "
              "default all three",
    "group_semantics": "ablation: --no-group-semantics drops the global group semantics (graph pooling)",
    "label_graph": "ablation: --no-label-graph gives the GAT layers an identity adjacency instead of the "
                   "co-occurrence graph",
}


def add_config_arguments(parser: Any) -> None:
    """One option per TrainConfig field; unset options keep the dataset preset's value."""
    import argparse

    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": None, "help": HELP.get(f.name)}
        if f.name == "dataset":
            parser.add_argument(flag, required=True, choices=list(PRESETS), help=HELP["dataset"])
            continue
        if f.name == "resume":
            parser.add_argument(flag, nargs="?", const="auto", default=None, metavar="CHECKPOINT", help=HELP["resume"])
            continue
        ann = str(f.type)
        if ann.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif ann.startswith("tuple"):
            kw.update(type=float if "float" in ann else int, nargs="+")
        elif ann.startswith("int"):
            kw["type"] = int
        elif ann.startswith("float"):
            kw["type"] = float
        if f.name in ("amp", "on_error"):
            kw["choices"] = ["none", "bf16", "fp16"] if f.name == "amp" else ["stop", "skip"]
        parser.add_argument(flag, **kw)


def config_from_args(args: Any) -> TrainConfig:
    """The preset of args.dataset with every option the user gave on top."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}
    if values["dataset"] != "synthetic" and not values["data"]:
        raise MSRNError(f"--data is required for --dataset {values['dataset']}")
    return preset_config(values.pop("dataset"), **values)
