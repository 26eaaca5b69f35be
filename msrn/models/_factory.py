"""`create_model`, the front of the registry's `build_model`: a registered model from label files, arrays or a
`LabelSet`, with pretrained backbone weights. A trained model comes from `load_checkpoint` (_loading.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from msrn.errors import MSRNError
from msrn.labels.graph import TAU, Cooccurrence, adjacency_from
from msrn.labels.labelset import LabelSet
from msrn.labels.wordvec import load_word_vectors
from msrn.models._pretrained import load_pretrained_backbone, load_timm_pretrained
from msrn.models._registry import build_model, label_count, takes_label_inputs
from msrn.models.baseline import PlainClassifier
from msrn.models.headnet import HeadNetwork
from msrn.models.msrn import MSRN
from msrn.models.timm_backbone import TimmBackbone


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
    label_set: LabelSet | None = None,
    **overrides: Any,
) -> MSRN | PlainClassifier | HeadNetwork:
    """A registered model with fresh head weights (the one way to build one; load a trained one with
    `load_checkpoint`).

    `word_vectors` (array, `.pkl`, `.npy` or GloVe text file) and `cooccurrence` (training-split
    counts, the reference's `{'adj','nums'}` pickle, or `(counts, nums)`) define the label graph;
    without them the model gets placeholder vectors and no edges. A `label_set` gives labels, vectors
    and adjacency (its tau and re-weighting) instead. `pretrained` loads the backbone:
    ImageNet weights (file, URL, 'imagenet') or a reference or msrn checkpoint's backbone with its
    conv_buffer1/2. `head="elementwise"` builds the reference's element-wise classifier instead of the MLP.
    """
    vectors: np.ndarray | None
    adj: np.ndarray | None
    if label_set is not None:
        if labels is not None or word_vectors is not None or cooccurrence is not None or tau != TAU:
            raise MSRNError("give a label set or labels, word vectors, co-occurrence and tau, not both")
        labels, vectors, adj = label_set.labels, label_set.word_vectors, label_set.adjacency()
    elif takes_label_inputs(name):  # baselines take no label inputs: their files are not read
        num_classes, labels = label_count(num_classes, labels)
        names = labels or [str(i) for i in range(num_classes)]
        vectors = None if word_vectors is None else load_word_vectors(word_vectors, names)
        adj = adjacency_from(cooccurrence, num_classes, tau)
    else:
        vectors = adj = None
    if takes_label_inputs(name):  # a baseline's build ignores the label set's vectors and graph
        overrides.update(word_vectors=vectors, adjacency=adj, pool_ratio=pool_ratio, num_groups=num_groups)
    model = build_model(name, num_classes, labels, **overrides)
    assert isinstance(model, (MSRN, PlainClassifier, HeadNetwork))  # what the registered entrypoints build
    if pretrained is not None and isinstance(model.backbone, TimmBackbone):
        load_timm_pretrained(model.backbone, pretrained)
    elif pretrained is not None:
        load_pretrained_backbone(model, pretrained)
    return model
