"""One typed configuration for training and evaluation, shared by the CLI and the Python API.

Dataset presets carry the paper's hyper-parameters (docs/design.md §7), so a user names the
dataset and the data path and nothing else. Every field can be overridden from the CLI, or from a --config
file (a run's config.json reruns it): a new option is one field, declared with `option(default, help,
choices=..., low=..., high=...)` (msrn.options); its flag and its checks follow from that declaration.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msrn.data import (
    DATASETS,
    GENERATED,
    apparel_labels_option,
    data_option,
    keep_unannotated_option,
)
from msrn.data.loader import default_workers
from msrn.data.transforms import AUGMENTS
from msrn.engine.losses import ASL_CLIP, ASL_GAMMA_NEG, ASL_GAMMA_POS, FOCAL_ALPHA, FOCAL_GAMMA, LOSSES
from msrn.engine.optim import ONECYCLE_PCT_START, OPTIMIZERS, SCHEDULES
from msrn.engine.recipes import RECIPES, recipe_overrides
from msrn.errors import MSRNError
from msrn.labels.options import cooccurrence_option, name_map_option, tau_option, word_vectors_option
from msrn.labels.reference_files import default_sources
from msrn.models import list_heads
from msrn.options import amp_option, check_field, device_option, field_values, option, tta_option


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to the run folder as config.json. Each field carries its
    option's help, choices and bounds, so an option is declared in one place."""

    dataset: str = option(
        "synthetic", "dataset kind; its preset carries the paper's hyper-parameters", choices=DATASETS, required=True
    )
    data: str = data_option(required=False)
    out: str = option(
        "",
        "run folder: last.pt, best.pt, metrics.json, config.json, log.txt, plots (default runs/DATASET-MODEL, "
        "e.g. runs/scenes-msrn_tiny: the same folder each time, so a bare --resume finds it)",
    )
    model: str = option(
        "msrn_resnet101",
        "registered model name: msrn_resnet101, msrn_resnet50, msrn_resnet18, msrn_tiny, msrn_timm, baseline_*, "
        "or a compared head (docs/heads.md): mlgcn_*, csra_*, mldecoder_*, q2l_*, addgcn_*, baseline_max_*, "
        "each _resnet101, _resnet50, _resnet18, _tiny or _timm",
    )
    recipe: str | None = option(
        None,
        "a training recipe laid over the dataset preset (your other options still win): gcn (the preset: SGD, "
        "soft margin, steps), transformer (AdamW, one-cycle, ASL, EMA) or paper (the model's own paper's "
        "optimiser, schedule, loss and augmentation; docs/heads.md)",
        choices=RECIPES,
    )
    backbone: str | None = option(
        None,
        "--model msrn_timm (or another _timm model): a timm model with feature maps at strides 8, 16, 32 "
        "(convnext_tiny, efficientnet_b3, regnety_032...); needs timm and torchvision; --pretrained imagenet: "
        "timm's weights",
    )
    pretrained: str | None = option(
        None,
        "the backbone's weights: 'imagenet' (torchvision's file), an ImageNet file or URL, 'none', or a "
        "reference MSRN or msrn checkpoint (a .pt, a model folder or hf://OWNER/NAME), whose backbone comes with "
        "its conv_buffer1/2 (the reference keeps them inside its backbone), e.g. the COCO model for the paper's "
        "VOC recipe",
    )
    init: str | None = option(
        None,
        "start training from every weight of a reference MSRN or msrn checkpoint (a .pt, a model folder "
        "or hf://OWNER/NAME; fine-tuning): layers the new label set reshapes start afresh, label vectors and "
        "graph come from this run; replaces --pretrained, excludes --resume",
        metavar="CHECKPOINT",
    )
    image_size: int = option(448, "training and evaluation input side in pixels (msrn models: at least 64)", low=32)
    crop_scales: tuple[float, ...] = option(
        (1.0, 0.9, 0.8, 0.7, 0.6),
        "training crop sides as fractions of the shorter image side, one drawn per "
        "image (the reference's multi-scale crop: 1.0 0.9 0.8 0.7 0.6)",
        low=0,
        high=1,
        bounds="(]",
    )
    augment: str = option(
        "multiscale",
        "training augmentation: multiscale (the reference's crop over --crop-scales, and a flip), resizedcrop "
        "(CSRA's: 0.7-1 of the area, and a flip) or randaugment (ASL's, ML-Decoder's, Query2Label's: Cutout "
        "and RandAugment)",
        choices=AUGMENTS,
    )
    epochs: int = option(30, "epochs to train", low=1)
    batch_size: int = option(16, "global batch per optimiser step (all processes together)", low=1)
    lr: float = option(0.1, "learning rate of the head (everything outside the backbone)", low=0)
    lr_backbone: float = option(
        0.01, "learning rate of the backbone and its conv_buffer layers, as in the reference (0 freezes them)", low=0
    )
    optimizer: str = option(
        "sgd",
        "sgd (the paper's: momentum, L2 weight decay) or adamw (decoupled weight decay; the transformer heads' recipe)",
        choices=OPTIMIZERS,
    )
    momentum: float = option(0.9, "SGD momentum", low=0, high=1, bounds="[)")
    weight_decay: float = option(1e-4, "weight decay (SGD's L2 term, AdamW's decoupled decay)", low=0)
    schedule: str = option(
        "step",
        "learning-rate schedule: step (the paper's: x --lr-gamma at each epoch of --lr-steps) or onecycle "
        f"(rise to --lr and --lr-backbone over a fraction {ONECYCLE_PCT_START:g} of the steps, then a cosine "
        "decay, stepped every optimiser step, as ASL, ML-Decoder and Query2Label train)",
        choices=SCHEDULES,
    )
    lr_steps: tuple[int, ...] = option(
        (20,), "--schedule step: epochs at which the learning rates drop by --lr-gamma", low=1
    )
    lr_gamma: float = option(0.1, "factor of each learning-rate drop", low=0, high=1, bounds="(]")
    warmup_epochs: float = option(
        0.0, "raise the learning rates linearly from 0 over this many epochs, step by step (CSRA's: 2)", low=0
    )
    max_grad_norm: float | None = option(
        None,
        "clip the gradient norm at this value (default off, as the reference's effective recipe, whose clip "
        "runs before backward and so clips nothing); 0 turns clipping off",
        low=0,
    )
    pool_ratio: float = option(0.2, "K = int(pool_ratio x C) label groups", low=0, high=1, bounds="(]")
    # ablation switches of the MSRN head (the paper's model: all three depths, groups and graph on)
    depths: tuple[int, ...] = option(
        (1, 2, 3),
        "ablation: the depths the MSRN head reads, any of 1 (after layer2), 2 (layer3), 3 (layer4); default all three",
        choices=(1, 2, 3),
    )
    group_semantics: bool = option(
        True, "ablation: --no-group-semantics drops the global group semantics (graph pooling)"
    )
    label_graph: bool = option(
        True, "ablation: --no-label-graph gives the GAT layers an identity adjacency instead of the co-occurrence graph"
    )
    head: str = option(
        "mlp",
        "the MSRN classifier: mlp (the paper's, default; its fc1 grows with labels x (labels + groups)) or "
        "elementwise (the reference code's per-label head, weights linear in the labels: for thousands of labels)",
        choices=list_heads(),
    )
    word_vectors: str | None = word_vectors_option()
    name_map: str | None = name_map_option()
    cooccurrence: str | None = cooccurrence_option()
    tau: float = tau_option()
    train_split: str | None = option(None, "training split (default: the dataset's)")
    test_split: str | None = option(None, "test split (default: the dataset's)")
    keep_unannotated: bool = keep_unannotated_option()
    apparel_labels: str | None = apparel_labels_option()
    val_fraction: float = option(
        0.0,
        "carve this fraction of training images as a validation split; best.pt is chosen on it",
        low=0,
        high=1,
        bounds="[)",
    )
    tune_thresholds: bool = option(
        False, "per-label thresholds from the validation split (--val-fraction), stored in checkpoints"
    )
    seed: int = option(0, "seed of every random choice of the run", low=0)
    workers: int = option(
        None,
        "data-loading processes per training process (default: from the CPUs this process may use, up to 8 "
        "per GPU process; at most 2 without CUDA, where the model needs the cores)",
        low=0,
        factory=lambda: default_workers(torch.cuda.is_available()),
    )
    in_memory: bool = option(
        False,
        "decode every image once before training and keep it in memory, so no file is read again and no "
        "loading process is needed (small data sets; the scenes preset's default); up to 4 GiB decoded",
    )
    device: str = device_option("auto")
    amp: str = amp_option()
    compile: bool = option(
        False,
        "run the training steps through torch.compile (opt-in: the first steps compile for minutes on a "
        "CPU, tens of seconds on a GPU; the same losses to float32 rounding)",
    )
    save_every: int = option(
        200,
        "also write last.pt every N optimiser steps (0: only at epoch ends), so a kill loses at most N steps",
        low=0,
    )
    grad_accum: int = option(1, "micro-batches per optimiser step (--batch-size is split across them)", low=1)
    sync_bn: bool = option(False, "SyncBatchNorm under torchrun")
    on_error: str = option(
        "stop", "unreadable training image: stop, or skip it (counted and logged)", choices=("stop", "skip")
    )
    loss: str = option(
        "softmargin", "training loss: softmargin (the paper's, default), asl (Asymmetric Loss) or focal", choices=LOSSES
    )
    asl_gamma_neg: float = option(
        ASL_GAMMA_NEG, f"--loss asl: focusing exponent of negatives (default {ASL_GAMMA_NEG:g})", low=0
    )
    asl_gamma_pos: float = option(
        ASL_GAMMA_POS, f"--loss asl: focusing exponent of positives (default {ASL_GAMMA_POS:g})", low=0
    )
    asl_clip: float = option(
        ASL_CLIP,
        f"--loss asl: probability margin; negatives with p below it give no loss (default {ASL_CLIP:g})",
        low=0,
        high=1,
        bounds="[)",
    )
    focal_gamma: float = option(FOCAL_GAMMA, f"--loss focal: focusing exponent (default {FOCAL_GAMMA:g})", low=0)
    focal_alpha: float = option(
        FOCAL_ALPHA,
        f"--loss focal: weight of positives, negatives get 1 - alpha (default {FOCAL_ALPHA:g})",
        low=0,
        high=1,
    )
    ema: float | None = option(
        None,
        "keep an exponential moving average of the weights with this decay per step (e.g. 0.999); both "
        "the live and the EMA weights are evaluated and best.pt holds the better on the validation split (the "
        "EMA weights without one); 0 turns it off",
        low=0,
        high=1,
        bounds="()",
    )
    ema_warmup: int = option(
        0, "EMA warm-up in optimiser steps: step n uses decay x (1 - exp(-n / STEPS)); default 0 (none)", low=0
    )
    tta: str = tta_option(
        "test-time augmentation of every epoch's evaluation: none (default) or flip (the average of the image's "
        "and its mirror's logits); evaluate and predict take --tta too"
    )
    resume: str | None = option(
        None,
        "resume from a checkpoint; with no file, from last.pt in the run folder",
        metavar="CHECKPOINT",
        const="auto",
    )

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
        switches = {
            "depths": tuple(self.depths),
            "group_semantics": self.group_semantics,
            "label_graph": self.label_graph,
            "head": self.head,
        }
        return {} if switches == _FULL_MODEL else switches

    def validate(self) -> TrainConfig:
        """This config with its spellings settled (`--pretrained none`, `--ema 0`, sorted depths), or one
        MSRNError naming the option that is out of its choices or bounds or that conflicts with another.
        Changes nothing in place."""
        changes: dict[str, Any] = {}
        for name in ("pretrained", "init"):  # `--pretrained none` trains the backbone from scratch
            value = getattr(self, name)
            if value is not None and value.strip().lower() in ("", "none"):
                changes[name] = None
        if (changes.get("init", self.init)) is not None:
            changes["pretrained"] = None  # --init supplies the backbone too: nothing to download or load twice
        if self.ema == 0:
            changes["ema"] = None  # `--ema 0` turns it off
        if not self.out:  # one folder per data set and model, the same on every rank and for a later --resume
            changes["out"] = default_run_folder(self.dataset, self.model)
        cfg = dataclasses.replace(self, **changes)
        for f in dataclasses.fields(cfg):
            check_field(f, getattr(cfg, f.name))
        if cfg.model.startswith("msrn") and cfg.image_size < 64:  # stride-32 features, then a 2x2 pool
            raise MSRNError(f"--model {cfg.model} needs --image-size >= 64, not {cfg.image_size}")
        if not cfg.crop_scales:
            raise MSRNError("--crop-scales needs at least one fraction")
        if cfg.tune_thresholds and cfg.val_fraction <= 0:
            raise MSRNError("--tune-thresholds needs a validation split (--val-fraction > 0): never the test split")
        if cfg.in_memory and cfg.on_error == "skip":
            raise MSRNError(
                "--in-memory decodes every image before training and stops at an unreadable one; "
                "it does not go with --on-error skip"
            )
        if not cfg.depths or len(set(cfg.depths)) != len(cfg.depths):
            raise MSRNError(f"--depths must be distinct values among 1, 2, 3, not {list(cfg.depths)}")
        cfg = dataclasses.replace(cfg, depths=tuple(sorted(cfg.depths)))
        if cfg.model_switches() and not cfg.model.startswith("msrn"):
            raise MSRNError(
                f"--depths, --no-group-semantics, --no-label-graph and --head change the MSRN head; "
                f"{cfg.model} has none"
            )
        if cfg.batch_size % cfg.grad_accum:
            raise MSRNError(f"--grad-accum {cfg.grad_accum} must divide --batch-size {cfg.batch_size}")
        if cfg.model.endswith("_timm") != bool(cfg.backbone):
            raise MSRNError(
                f"--backbone NAME goes with the _timm models (a timm model name), and {cfg.model} needs it"
                if cfg.model.endswith("_timm")
                else f"--backbone NAME goes with the _timm models (msrn_timm, csra_timm, ...), not {cfg.model}"
            )
        return cfg


def default_run_folder(dataset: str, model: str) -> str:
    """The run folder of a run given no --out: runs/DATASET-MODEL."""
    return f"runs/{dataset}-{model}"


_FULL_MODEL = {"depths": (1, 2, 3), "group_semantics": True, "label_graph": True, "head": "mlp"}
_PAPER = dict(
    model="msrn_resnet101",
    pretrained="imagenet",
    image_size=448,
    batch_size=16,
    lr=0.1,
    lr_backbone=0.01,
    epochs=30,
    lr_steps=(20,),
)
# The paper's code asks for 20 epochs with a step at 30 and then runs 200 epochs selecting on the
# test set; these presets state a schedule and select nothing on the test set.
# the built-in data sets' recipe: a tiny backbone trained from scratch on a CPU
_TINY_FROM_SCRATCH: dict[str, Any] = dict(
    model="msrn_tiny", pretrained=None, batch_size=32, lr=0.1, lr_backbone=0.1, pool_ratio=0.2, max_grad_norm=10.0
)
PRESETS: dict[str, dict[str, Any]] = {
    "voc2007": dict(_PAPER, **default_sources("voc2007"), pool_ratio=0.2),
    "coco2014": dict(_PAPER, **default_sources("coco2014"), pool_ratio=0.05),
    "nuswide": dict(_PAPER, **default_sources("nuswide"), pool_ratio=0.05),
    "apparel": dict(_PAPER, **default_sources("apparel"), pool_ratio=0.2, epochs=20, lr_steps=(15,)),
    "csv": dict(_PAPER, pool_ratio=0.2, val_fraction=0.1),
    # the built-in demo: a tiny backbone from scratch on 64 px images, minutes on a CPU
    "synthetic": dict(_TINY_FROM_SCRATCH, image_size=64, epochs=12, lr_steps=(9,), workers=1),
    # the built-in benchmark (msrn demo) on 128 px scenes: labels there hang on small objects anywhere in the
    # frame, which the multi-scale crop would cut away while keeping their labels, so only flips augment;
    # its 2600 images (98 MiB decoded) are decoded once, so training needs no loading process and the demo
    # trains MSRN and the baseline at once; that leaves time for 18 epochs (at 14, x0.1 after 11, MSRN's
    # test mAP was still rising), the same recipe for every model
    "scenes": dict(
        _TINY_FROM_SCRATCH,
        image_size=128,
        epochs=18,
        lr_steps=(14,),
        workers=0,
        in_memory=True,
        crop_scales=(1.0,),
    ),
}


def preset_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The dataset's preset with the given fields replaced (None values are ignored)."""
    if dataset not in PRESETS:
        raise MSRNError(f"unknown dataset {dataset!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig.from_dict(layered(dataset, {k: v for k, v in overrides.items() if v is not None})).validate()


def layered(dataset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The values of a run: the dataset's preset, under the recipe `given` names (for its model, over its
    epochs where `given` fixes them), under `given`."""
    preset = PRESETS[dataset]
    values = {**preset, **given, "dataset": dataset}
    recipe = values.get("recipe")
    if recipe is None:
        return values
    overrides = recipe_overrides(recipe, values["model"], dataset, preset, given.get("epochs"))
    if overrides is None:
        raise MSRNError(f"--recipe paper: no paper recipe for {values['model']} (docs/heads.md lists them)")
    return {**preset, **overrides, **given, "dataset": dataset}


__all__ = ["TrainConfig", "PRESETS", "preset_config"]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options a --config file holds: a run's config.json, or any JSON or YAML mapping of option names
    (as in config.json: lr_backbone, not --lr-backbone) to values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MSRNError(f"--config: cannot read {path}: {e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional: only YAML files need PyYAML
        except ImportError:
            raise MSRNError(
                f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); JSON needs nothing"
            ) from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise MSRNError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise MSRNError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise MSRNError(f"--config {path} must hold a mapping of option names to values")
    return values


def config_from_args(args: Any) -> TrainConfig:
    """The config a `msrn train` command line describes: the dataset's preset, under the values of the --config
    file (a run's config.json gives every value, so the run is reproduced), under the flags given."""
    given = {k: v for k, v in field_values(TrainConfig, args).items() if v is not None}
    from_file = read_config_file(args.config) if getattr(args, "config", None) else {}
    dataset = given.get("dataset", from_file.get("dataset"))
    if dataset is None:
        raise MSRNError("--dataset is required (or --config FILE with a dataset)")
    if dataset not in PRESETS:
        raise MSRNError(f"unknown dataset {dataset!r}; choose one of {', '.join(PRESETS)}")
    values = layered(dataset, {**from_file, **given})
    if dataset not in GENERATED and not values.get("data"):  # generated data sets go to msrn's cache
        raise MSRNError(f"--data is required for --dataset {dataset}")
    return TrainConfig.from_dict(values).validate()
