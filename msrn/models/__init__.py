"""The networks: MSRN, its baselines and the heads compared with it (docs/heads.md), built by name through the
registry, and loaded from checkpoints (msrn's own, the reference MSRN's and the peers' published ones).

Laid out as timm lays out its models. Architecture files stand alone and read as the maths: `msrn.py` (the
paper's network and its registered names), `baseline.py`, `heads.py`, `gat.py`, `attention.py`, `resnet.py`,
`timm_backbone.py`; the compared heads `mlgcn.py`, `csra.py`, `mldecoder.py`, `q2l.py`, `addgcn.py` and
`pooling.py` on `headnet.py`, their shared backbone-and-head protocol. They import nothing from the
infrastructure but the registry. The infrastructure files start with `_`:

- `_registry.py`: `register_model`, `register_head`, `build_model` (every build passes its checks);
- `_factory.py`: `create_model`, from label files, arrays or a LabelSet, with pretrained backbones;
- `_loading.py`: `load_checkpoint` -> `Loaded`, `model_state` (the checkpoint's model part);
- `_reference_layout.py`: the one mapping of the reference's and older msrn checkpoints' layouts;
- `_peer_layouts.py`: the published ML-GCN, CSRA, ADD-GCN and Query2Label checkpoints' layouts;
- `_state.py`, `_pretrained.py`: strict state loading, `--init`, backbone weights;
- `_fuse.py`, `_ops.py`, `_linear.py`: the CPU fast paths; `_tta.py`: flip averaging.

How to add a model: write its `nn.Module` in its own file here, and below it a function per name,
decorated with `@register_model`, taking `num_classes`, `labels` and the model's settings as keywords and
returning the module (`@register_model(label_graph=True)` if it also takes `word_vectors`, `adjacency`,
`pool_ratio` and `num_groups`); raise ValueError
for a setting that does not fit (the registry turns it into one line). Import the file below. A head
for MSRN's attended semantics: a class in heads.py decorated with `@register_head("name")`, taking
(num_classes, rows, width, hidden, groups).
"""

from __future__ import annotations

# importing the architecture files registers them
from msrn.models import addgcn, baseline, csra, heads, mldecoder, mlgcn, msrn, pooling, q2l  # noqa: F401
from msrn.models._factory import create_model
from msrn.models._fuse import optimize_for_inference, use_fast_paths
from msrn.models._loading import Loaded, Network, load_checkpoint, model_state
from msrn.models._peer_layouts import dataset_settings
from msrn.models._reference_layout import checkpoint_weights
from msrn.models._registry import build_model, list_heads, list_models, register_head, register_model
from msrn.models._state import match_init_state, require_backbone
from msrn.models._tta import with_tta
from msrn.models.baseline import PlainClassifier
from msrn.models.headnet import HeadNetwork
from msrn.models.msrn import MSRN, MSRNConfig, Semantics, placeholder_vectors
from msrn.models.resnet import ResNet

__all__ = [
    "MSRN",
    "MSRNConfig",
    "HeadNetwork",
    "Network",
    "PlainClassifier",
    "ResNet",
    "Loaded",
    "Semantics",
    "build_model",
    "checkpoint_weights",
    "create_model",
    "dataset_settings",
    "list_heads",
    "list_models",
    "load_checkpoint",
    "match_init_state",
    "model_state",
    "optimize_for_inference",
    "placeholder_vectors",
    "register_head",
    "register_model",
    "require_backbone",
    "use_fast_paths",
    "with_tta",
]
