"""Model registry, in the style of timm: a name picks a configuration, and `_build_model` builds it from
arrays (label vectors, adjacency). `msrn.models.create.create_model` is its public front, which also reads
label files and LabelSets."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import torch

from msrn.errors import MSRNError
from msrn.models.gat import group_loss_weight
from msrn.models.heads import HEADS
from msrn.models.msrn import MSRN, Classifier, MSRNConfig, PlainClassifier, check_depths
from msrn.models.timm_backbone import PREFIX

# name -> overrides of MSRNConfig (the paper's model first, then smaller ones for CPU work)
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "msrn_resnet101": dict(backbone="resnet101"),
    "msrn_resnet50": dict(backbone="resnet50"),
    "msrn_resnet18": dict(backbone="resnet18", semantic_dim=256, hidden_dim=1024),
    "msrn_tiny": dict(backbone="resnet_tiny", label_dims=(64, 64), semantic_dim=64, hidden_dim=256),
    "msrn_timm": dict(),  # the paper's head on a timm backbone: create_model(..., backbone=NAME)
}
# the mlp head's fc1 sees (C + K) x 3 x D inputs; above this many weights (4 GiB in fp32) building is refused
MAX_FC1_WEIGHTS = 2**30
# the same backbones without the MSRN head, for baselines: name -> (backbone, hidden width of an MLP head;
# 0 = global pooling + linear). baseline_mlp_tiny's 1.00M head weights match msrn_tiny's head at 16 labels
# (0.99M, the built-in scenes benchmark), to tell capacity from structure.
BASELINES: dict[str, tuple[str, int]] = {
    "baseline_resnet101": ("resnet101", 0),
    "baseline_resnet50": ("resnet50", 0),
    "baseline_resnet18": ("resnet18", 0),
    "baseline_tiny": ("resnet_tiny", 0),
    "baseline_mlp_tiny": ("resnet_tiny", 6912),
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS) + sorted(BASELINES)


def placeholder_vectors(num_classes: int, dim: int = 300, seed: int = 0) -> np.ndarray:
    """Fixed random label vectors for models built without real ones (tests, quick experiments)."""
    return np.random.default_rng(seed).standard_normal((num_classes, dim)).astype(np.float32)


def label_count(num_classes: int | None, labels: list[str] | None) -> tuple[int, list[str] | None]:
    """The number of labels from num_classes and/or label names (which must agree), and the names as a list."""
    if labels is not None:
        labels = list(labels)
        if num_classes is not None and num_classes != len(labels):
            raise MSRNError(f"num_classes={num_classes} but {len(labels)} labels were given")
        num_classes = len(labels)
    if not num_classes or num_classes < 1:
        raise MSRNError("create_model needs num_classes or labels")
    return num_classes, labels


def _build_model(
    name: str = "msrn_resnet101",
    num_classes: int | None = None,
    labels: list[str] | None = None,
    word_vectors: np.ndarray | None = None,
    adjacency: np.ndarray | None = None,
    pool_ratio: float = 0.2,
    num_groups: int | None = None,
    **overrides: Any,
) -> Classifier:
    """A registered model with fresh weights from arrays: label vectors (C x dim; placeholders without them)
    and the adjacency A_hat (C x C, used as given; no edges without it). Reads no file.

    Baselines take neither. `overrides` change MSRNConfig fields (`backbone=NAME` for msrn_timm).
    """
    num_classes, labels = label_count(num_classes, labels)
    if name in BASELINES:
        if overrides:
            raise MSRNError(f"{name} is a baseline without the MSRN head: {', '.join(sorted(overrides))} do not apply")
        arch, hidden = BASELINES[name]
        return PlainClassifier(arch, num_classes, labels, hidden=hidden)
    if name not in MODEL_CONFIGS:
        raise MSRNError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    if name == "msrn_timm":
        overrides["backbone"] = timm_name(overrides.get("backbone"))
    vecs = placeholder_vectors(num_classes) if word_vectors is None else np.asarray(word_vectors, dtype=np.float32)
    adj = np.eye(num_classes, dtype=np.float32) if adjacency is None else np.asarray(adjacency, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != num_classes or adj.shape != (num_classes, num_classes):
        raise MSRNError(f"label vectors {vecs.shape} and adjacency {adj.shape} do not fit {num_classes} labels")
    groups = num_groups or max(1, int(pool_ratio * num_classes))
    unknown = sorted(set(overrides) - {f.name for f in fields(MSRNConfig)})
    if unknown:
        raise MSRNError(f"{name} has no setting {', '.join(unknown)}")
    # a fresh model's group loss is weighted for its label count (a reference checkpoint passes the reference's)
    weight = group_loss_weight(num_classes, groups)
    cfg = MSRNConfig(
        num_classes=num_classes,
        num_groups=groups,
        word_dim=vecs.shape[1],
        **{"group_loss_weight": weight, **MODEL_CONFIGS[name], **overrides},
    )
    try:
        cfg.depths = check_depths(cfg.depths)
    except ValueError as e:
        raise MSRNError(str(e)) from None
    if cfg.head not in HEADS:
        raise MSRNError(f"head must be one of {', '.join(HEADS)}, not {cfg.head!r}")
    rows = cfg.num_classes + (cfg.num_groups if cfg.group_semantics else 0)
    fc1 = rows * len(cfg.depths) * cfg.semantic_dim * cfg.hidden_dim
    if cfg.head == "mlp" and fc1 > MAX_FC1_WEIGHTS:  # checked before allocating: 5000 labels would ask for tens of GB
        raise MSRNError(
            f"{name} with {num_classes} labels and {groups} groups needs {fc1 / 1e9:.1f} billion weights in "
            f"fc1 (limit {MAX_FC1_WEIGHTS / 1e9:.1f}); use --head elementwise (weights linear in the labels), "
            "fewer labels, a smaller --pool-ratio or msrn_tiny"
        )
    return MSRN(cfg, torch.from_numpy(vecs), torch.from_numpy(adj), labels)


def timm_name(backbone: str | None) -> str:
    """The `timm:NAME` backbone of msrn_timm from NAME (or `timm:NAME`); one line when it is missing."""
    if not backbone or backbone == PREFIX:
        raise MSRNError("msrn_timm needs a timm model name: --backbone NAME (e.g. convnext_tiny)")
    return backbone if backbone.startswith(PREFIX) else PREFIX + backbone
