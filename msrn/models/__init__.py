"""The networks: MSRN and its baselines, built by name (`create_model`), and loaded from checkpoints.

`registry` names the configurations and builds them; `msrn` is the module (backbone, label graph,
label-guided attention at three depths, head); `resnet` (or `timm_backbone`), `gat`, `attention`, `ops`
and `linear` are its parts; `fuse` the folded inference form, `tta` flip averaging; `loading` and
`pretrained` read weights into them.
"""
from __future__ import annotations

from msrn.models.msrn import MSRN, MSRNConfig, PlainClassifier
from msrn.models.registry import MODEL_CONFIGS, create_model, list_models, placeholder_vectors
from msrn.models.resnet import ResNet

__all__ = ["MSRN", "MSRNConfig", "PlainClassifier", "ResNet", "create_model", "list_models", "MODEL_CONFIGS",
           "placeholder_vectors"]
