"""Model registry and `create_model`, in the style of timm: a name picks a configuration."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msrn.errors import MSRNError
from msrn.labels.graph import TAU, Cooccurrence, adjacency, read_cooccurrence
from msrn.labels.wordvec import load_word_vectors
from msrn.models.msrn import MSRN, MSRNConfig, PlainClassifier, check_depths
from msrn.models.timm_backbone import PREFIX, TimmBackbone, load_timm_pretrained

# name -> overrides of MSRNConfig (the paper's model first, then smaller ones for CPU work)
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "msrn_resnet101": dict(backbone="resnet101"),
    "msrn_resnet50": dict(backbone="resnet50"),
    "msrn_resnet18": dict(backbone="resnet18", semantic_dim=256, hidden_dim=1024),
    "msrn_tiny": dict(backbone="resnet_tiny", label_dims=(64, 64), semantic_dim=64, hidden_dim=256),
    "msrn_timm": dict(),  # the paper's head on a timm backbone: create_model(..., backbone=NAME)
}
# fc1 sees (C + K) x 3 x D inputs; above this many weights (4 GiB in fp32) building is refused
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


def _as_cooccurrence(src: Any) -> Cooccurrence | None:
    if src is None or isinstance(src, Cooccurrence):
        return src
    if isinstance(src, (str, Path)):
        return read_cooccurrence(src)
    if isinstance(src, dict):
        return Cooccurrence(np.asarray(src["adj"]), np.asarray(src["nums"]))
    counts, nums = src
    return Cooccurrence(np.asarray(counts), np.asarray(nums))


def placeholder_vectors(num_classes: int, dim: int = 300, seed: int = 0) -> np.ndarray:
    """Fixed random label vectors for models built without real ones (tests, quick experiments)."""
    return np.random.default_rng(seed).standard_normal((num_classes, dim)).astype(np.float32)


def create_model(
    name: str = "msrn_resnet101",
    num_classes: int | None = None,
    labels: list[str] | None = None,
    pool_ratio: float = 0.2,
    num_groups: int | None = None,
    word_vectors: str | Path | np.ndarray | None = None,
    cooccurrence: str | Path | Cooccurrence | tuple | dict | None = None,
    tau: float = TAU,
    pretrained: str | Path | None = None,
    checkpoint: str | Path | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Build a registered model.

    `word_vectors` (array, `.pkl`, `.npy` or GloVe text file) and `cooccurrence` (training-split
    counts, the reference's `{'adj','nums'}` pickle, or `(counts, nums)`) define the label graph;
    without them the model gets placeholder vectors and no edges. `pretrained` loads the backbone:
    ImageNet weights (file, URL, 'imagenet') or a reference or msrn checkpoint's backbone with its
    conv_buffer1/2; `checkpoint` loads a whole trained model instead.
    """
    if checkpoint is not None:
        from msrn.models.loading import load_model

        return load_model(checkpoint, word_vectors=word_vectors, cooccurrence=cooccurrence, labels=labels)
    if labels is not None:
        labels = list(labels)
        if num_classes is not None and num_classes != len(labels):
            raise MSRNError(f"num_classes={num_classes} but {len(labels)} labels were given")
        num_classes = len(labels)
    if not num_classes or num_classes < 1:
        raise MSRNError("create_model needs num_classes or labels")
    if name in BASELINES:
        if overrides:
            raise MSRNError(f"{name} is a baseline without the MSRN head: {', '.join(sorted(overrides))} do not apply")
        arch, hidden = BASELINES[name]
        model = PlainClassifier(arch, num_classes, labels, hidden=hidden)
    elif name in MODEL_CONFIGS:
        if name == "msrn_timm":
            overrides["backbone"] = timm_name(overrides.get("backbone"))
        names = labels or [str(i) for i in range(num_classes)]
        vecs = (
            placeholder_vectors(num_classes)
            if word_vectors is None
            else load_word_vectors(word_vectors, names)
        )
        co = _as_cooccurrence(cooccurrence)
        if co is not None and co.num_classes != num_classes:
            raise MSRNError(f"co-occurrence statistics have {co.num_classes} labels, the model {num_classes}")
        adj = np.eye(num_classes, dtype=np.float32) if co is None else adjacency(co, tau)
        groups = num_groups or max(1, int(pool_ratio * num_classes))
        unknown = sorted(set(overrides) - {f.name for f in fields(MSRNConfig)})
        if unknown:
            raise MSRNError(f"{name} has no setting {', '.join(unknown)}")
        cfg = MSRNConfig(
            num_classes=num_classes, num_groups=groups, word_dim=vecs.shape[1], labels=list(labels or []),
            **{**MODEL_CONFIGS[name], **overrides},
        )
        try:
            cfg.depths = check_depths(cfg.depths)
        except ValueError as e:
            raise MSRNError(str(e)) from None
        rows = cfg.num_classes + (cfg.num_groups if cfg.group_semantics else 0)
        fc1 = rows * len(cfg.depths) * cfg.semantic_dim * cfg.hidden_dim
        if fc1 > MAX_FC1_WEIGHTS:  # checked before allocating: 5000 labels would ask for tens of GB
            raise MSRNError(
                f"{name} with {num_classes} labels and {groups} groups needs {fc1 / 1e9:.1f} billion weights in "
                f"fc1 (limit {MAX_FC1_WEIGHTS / 1e9:.1f}); use fewer labels, a smaller --pool-ratio or msrn_tiny"
            )
        model = MSRN(cfg, torch.from_numpy(vecs), torch.from_numpy(adj))
    else:
        raise MSRNError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    if pretrained is not None and isinstance(model.backbone, TimmBackbone):
        load_timm_pretrained(model.backbone, pretrained)
    elif pretrained is not None:
        from msrn.models.pretrained import load_pretrained_backbone

        load_pretrained_backbone(model, pretrained)
    return model


def timm_name(backbone: str | None) -> str:
    """The `timm:NAME` backbone of msrn_timm from NAME (or `timm:NAME`); one line when it is missing."""
    if not backbone or backbone == PREFIX:
        raise MSRNError("msrn_timm needs a timm model name: --backbone NAME (e.g. convnext_tiny)")
    return backbone if backbone.startswith(PREFIX) else PREFIX + backbone


