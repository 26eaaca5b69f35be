"""The networks: MSRN and its baselines, built by name, and loaded from checkpoints.

`registry` names the configurations and builds them from arrays; `create` is its one front
(`create_model`: label files, arrays or a LabelSet; pretrained backbones);
`msrn` is the module (backbone, label graph, label-guided attention at three depths, head); `resnet`
(or `timm_backbone`), `gat`, `attention`, `ops` and `linear` are its parts; `fuse` the folded inference
form, `tta` flip averaging; `loading` (`load_checkpoint` -> `Loaded`, the one loader, for project and
reference checkpoints, whose key layout `reference_layout` maps) and `pretrained` read weights into them.
"""

from __future__ import annotations

from msrn.models.create import create_model
from msrn.models.loading import Loaded, load_checkpoint
from msrn.models.msrn import MSRN, MSRNConfig, PlainClassifier, Semantics
from msrn.models.registry import MODEL_CONFIGS, list_models, placeholder_vectors
from msrn.models.resnet import ResNet

__all__ = [
    "MSRN",
    "MSRNConfig",
    "PlainClassifier",
    "ResNet",
    "create_model",
    "list_models",
    "MODEL_CONFIGS",
    "placeholder_vectors",
    "Loaded",
    "load_checkpoint",
    "Semantics",
]
