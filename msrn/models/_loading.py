"""Models from checkpoints (`load_checkpoint` -> `Loaded`) and the model part of a checkpoint (`model_state`).

A load reads the file or folder (msrn.hub, msrn.checkpoint), maps older layouts to the model's key names
(_reference_layout), builds through the registry (_registry) and loads the weights strictly.

Project checkpoints are dicts with `format: "msrn"`: the model's registered name, config and label names,
the weights (word vectors and adjacency are buffers, so they travel inside), optional per-label thresholds and,
for `last.pt`, the training state. Reference checkpoints (`{'epoch','arch','state_dict','best_score'}`) hold
no label inputs: they are built from the label files, and the reference keys the chosen head does not use
are dropped with a notice (_reference_layout.UNUSED_BY_HEAD).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn

from msrn.checkpoint import FORMAT, VERSION
from msrn.errors import MSRNError
from msrn.hub import read_source
from msrn.labels.graph import adjacency_from
from msrn.labels.reference_files import LABELS as REFERENCE_LABELS
from msrn.labels.reference_files import REFERENCE, check_label_order, dataset_for_classes, reference_file
from msrn.labels.wordvec import load_word_vectors
from msrn.models._peer_layouts import COCO_ID_ORDER, backbone_arch, dataset_settings, map_peer_state, peer_of
from msrn.models._reference_layout import (
    legacy_name,
    map_reference_state,
    project_state,
    reference_backbone,
    reference_state,
)
from msrn.models._registry import build_model, takes_label_inputs
from msrn.models.baseline import PlainClassifier
from msrn.models.gat import GROUP_LOSS_WEIGHT
from msrn.models.headnet import KIND as HEAD_KIND
from msrn.models.headnet import HeadNetwork
from msrn.models.msrn import MSRN, MSRNConfig
from msrn.options import UNRECORDED_IMAGE_SIZE

# the networks msrn builds and loads (what load_checkpoint, Predictor and the exports take)
Network: TypeAlias = MSRN | PlainClassifier | HeadNetwork


@dataclass(frozen=True)
class Loaded:
    """A model from a checkpoint (eval mode, CPU) and how it is meant to be used: input side in pixels,
    per-label thresholds (None: the checkpoint tuned none) and whether photos are turned upright by EXIF."""

    model: Network
    image_size: int = UNRECORDED_IMAGE_SIZE
    thresholds: np.ndarray | None = None
    exif_orientation: bool = True


def misfit(where: str, missing: list[str], unexpected: list[str], shapes: list[str], hint: str = "") -> None:
    """Raise one line naming the missing, unexpected and mis-shaped keys, if there are any."""
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
            problems.append(f"{len(keys)} {title}: {shown}")
    if problems:
        raise MSRNError(f"{where} does not fit the model: " + "; ".join(problems) + hint)


def shape_misfits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keys: list[str]) -> list[str]:
    return [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in keys
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict that fails with one line naming missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misfit(where, missing, unexpected, shape_misfits(own, state, [k for k in own if k in state]))
    module.load_state_dict(state, strict=True)


def _reference_label_inputs(
    num_classes: int,
    where: str,
    word_vectors: Any,
    cooccurrence: Any,
    labels: list[str] | None,
    dataset: str | None,
) -> tuple[list[str] | None, np.ndarray, np.ndarray | None]:
    """The label names, vectors and adjacency of a reference checkpoint, which holds none of them.

    A pickle not given (or given as 'reference') is the reference's own for the checkpoint's
    dataset: `dataset`, else the one with its number of labels. Without `labels` the outputs are
    named after that dataset's labels, in the reference's order.
    """
    if labels is not None and len(labels) != num_classes:
        raise MSRNError(f"{where} has {num_classes} labels but the dataset has {len(labels)}")
    known = dataset if dataset is not None else dataset_for_classes(num_classes)
    wanted = [
        kind
        for kind, src in (("word_vectors", word_vectors), ("cooccurrence", cooccurrence))
        if src is None or (isinstance(src, str) and src == REFERENCE)
    ]
    if wanted and known not in REFERENCE_LABELS:
        found = f"dataset {dataset} has" if dataset is not None else f"its {num_classes} labels match"
        raise MSRNError(
            f"{where} is a reference MSRN checkpoint, which holds no label vectors or graph, and {found} no "
            "reference files: give its word-vector pickle (--word-vectors FILE) and co-occurrence pickle "
            "(--cooccurrence FILE)"
        )
    if known in REFERENCE_LABELS:
        if len(REFERENCE_LABELS[known]) != num_classes:
            raise MSRNError(f"{where} has {num_classes} labels, {known} {len(REFERENCE_LABELS[known])}")
        if wanted and dataset is not None and labels is not None:
            check_label_order(known, labels, f"the {known} labels")
        labels = list(REFERENCE_LABELS[known]) if labels is None else labels
    # files are wanted only for a known dataset (checked above)
    files = {kind: reference_file(known, kind) for kind in wanted} if known is not None else {}
    names = labels or [str(i) for i in range(num_classes)]
    vectors = load_word_vectors(files.get("word_vectors", word_vectors), names)
    return labels, vectors, adjacency_from(files.get("cooccurrence", cooccurrence), num_classes)


def _load_reference(
    state: dict,
    where: str,
    word_vectors: Any,
    cooccurrence: Any,
    labels: list[str] | None,
    dataset: str | None,
    head: str = "mlp",
) -> MSRN:
    """msrn_resnet101 (or 50) from a reference checkpoint: its label inputs read, its keys mapped, then built.
    The checkpoint holds both of the reference's classifiers: `head` picks the one loaded (mlp: fc1/fc2,
    elementwise: W/B). `state` is the checkpoint's weights as reference_state gives them."""
    try:
        num_classes = state["fc2.weight"].shape[0]
        num_groups = state["group_embed.layers.0.assign_mat.W"].shape[1]
    except KeyError as e:
        raise MSRNError(f"{where} lacks {e.args[0]}; not an MSRN checkpoint") from None
    backbone = reference_backbone(state)
    name = {"resnet101": "msrn_resnet101", "resnet50": "msrn_resnet50"}.get(backbone)
    if name is None:
        raise MSRNError(f"{where}: unsupported backbone ({backbone})")
    labels, vectors, adj = _reference_label_inputs(num_classes, where, word_vectors, cooccurrence, labels, dataset)
    mapped, dropped = map_reference_state(state, head)
    # the reference's model and its loss: the group loss at the reference's fixed weight, whatever the label count
    model = build_model(
        name,
        num_classes,
        labels,
        word_vectors=vectors,
        adjacency=adj,
        num_groups=num_groups,
        head=head,
        group_loss_weight=GROUP_LOSS_WEIGHT,
    )
    assert isinstance(model, MSRN)  # msrn_resnet101/50 are MSRN configurations
    load_state_strict(model, {**mapped, "word_vectors": model.word_vectors, "adjacency": model.adjacency}, where)
    if dropped:
        warnings.warn(f"{where}: dropped unused reference parameters: {', '.join(dropped)}", stacklevel=3)
    return model


COCO_BY_ID = ("csra", "q2l")  # the peers whose COCO outputs follow COCO's category ids
# the tensors whose rows are a peer head's outputs, one per label, where each label's output depends on its rows
# alone: reordering those rows reorders the outputs exactly
PER_LABEL_ROWS = {"csra": r"heads\.\d+\.weight", "q2l": r"queries\.weight|out_weight|out_bias"}


def _peer_labels(
    family: str, state: dict[str, torch.Tensor], labels: list[str] | None, dataset: str | None, where: str
) -> list[str] | None:
    """The output names of a peer checkpoint, its weights reordered in place where they must be.

    A peer's outputs follow its data set's labels in that peer's order (CSRA's and Query2Label's COCO outputs
    follow COCO's category ids; ML-GCN's and ADD-GCN's the reference's files). Labels given that are those
    labels in another order (msrn's COCO reader sorts by name) reorder the per-label rows of CSRA and
    Query2Label; a graph head's labels interact, so another order is refused. Other labels name the outputs as
    given."""
    native = None
    if dataset in REFERENCE_LABELS:
        by_id = family in COCO_BY_ID and dataset == "coco2014"
        native = list(COCO_ID_ORDER if by_id else REFERENCE_LABELS[dataset])
    if labels is None or native is None or labels == native or sorted(labels) != sorted(native):
        return labels if labels is not None else native
    if family not in PER_LABEL_ROWS:
        raise MSRNError(f"{where}: its outputs follow the {dataset} labels in another order than the ones given")
    order = torch.tensor([native.index(name) for name in labels])
    for key in [k for k in state if re.fullmatch(PER_LABEL_ROWS[family], k)]:
        state[key] = state[key][order]
    return labels


def _load_peer(
    family: str,
    ckpt: dict,
    where: str,
    word_vectors: Any,
    labels: list[str] | None,
    dataset: str | None,
    settings: dict[str, Any],
) -> HeadNetwork:
    """A published ML-GCN, CSRA, ADD-GCN or Query2Label checkpoint as the msrn model of its head
    (msrn.models._peer_layouts): its keys mapped, the settings it does not record from its paper's setting for
    the data set (`dataset`, else the one with its number of labels), unless given; then loaded strictly."""
    state, dropped = map_peer_state(family, ckpt, where)
    arch = backbone_arch(state, where)
    num_classes = {
        "mlgcn": lambda: state["adjacency"].shape[0],
        "csra": lambda: state["heads.0.weight"].shape[0],
        "addgcn": lambda: state["sam.weight"].shape[0],
        "q2l": lambda: state["queries.weight"].shape[0],
    }[family]()
    if labels is not None and len(labels) != num_classes:
        raise MSRNError(f"{where} has {num_classes} labels but the dataset has {len(labels)}")
    known = dataset if dataset is not None else dataset_for_classes(num_classes)
    name = f"{family}_{arch}"
    given = {**dataset_settings(name, known), **settings}
    if family == "csra":
        given["num_heads"] = len([k for k in state if k.startswith("heads.")])
        given.setdefault("pixels", "unit")  # CSRA's code feeds its ResNet [0, 1] pixels, not ImageNet-normalised
        if "lam" not in given:
            raise MSRNError(
                f"{where} is a CSRA checkpoint, which does not record lambda, and {known or 'its data set'} has no "
                "published setting: give it (lam=...)"
            )
    labels = _peer_labels(family, state, labels, known, where)
    if family == "mlgcn":
        given["hidden"] = state["gc1"].shape[1]
        if word_vectors is None or (isinstance(word_vectors, str) and word_vectors == REFERENCE):
            if known not in REFERENCE_LABELS:
                raise MSRNError(
                    f"{where} is an ML-GCN checkpoint, which holds no label vectors, and {known or 'its data set'} "
                    "has no reference files: give its word-vector pickle (--word-vectors FILE)"
                )
            word_vectors = reference_file(known, "word_vectors")
        vectors = load_word_vectors(word_vectors, labels or [str(i) for i in range(num_classes)])
        state["word_vectors"] = torch.as_tensor(vectors, dtype=torch.float32)
        given.update(word_vectors=vectors, adjacency=state["adjacency"])
    if family == "addgcn":
        given["hidden"] = state["transform.weight"].shape[0]
    if family == "q2l":  # the widths and depths are in the keys; the attention heads are not (4 as published)
        given.setdefault("heads", 4)
        given["dim"] = state["queries.weight"].shape[1]
        given["feedforward"] = state["decoder.0.ffn.linear1.weight"].shape[0]
        for part in ("encoder", "decoder"):
            given[f"{part}_layers"] = len({k.split(".")[1] for k in state if k.startswith(part + ".")})
    try:
        model = build_model(name, num_classes, labels, **given)
    except MSRNError as e:
        raise MSRNError(f"{where}: {e}") from None
    assert isinstance(model, HeadNetwork)  # every peer's family registers head networks
    load_state_strict(model, state, where)
    if dropped:
        warnings.warn(f"{where}: dropped unused {family} parameters: {', '.join(dropped)}", stacklevel=3)
    return model


def model_state(model: nn.Module, image_size: int, exif_orientation: bool = True) -> dict[str, Any]:
    """The model part of a project checkpoint (weights, config, labels, input size, how images were decoded).

    exif_orientation says whether the training images were shown upright by their EXIF orientation,
    so that prediction decodes alike.
    """
    net = getattr(model, "module", model)  # unwrap DistributedDataParallel
    arch: dict[str, Any]
    if isinstance(net, MSRN):
        arch = {"kind": "msrn", "config": net.cfg.to_dict(), "labels": list(net.label_names)}
    elif isinstance(net, HeadNetwork):
        arch = net.describe()
    elif isinstance(net, PlainClassifier):
        arch = {
            "kind": "baseline",
            "backbone": net.backbone.arch,
            "num_classes": net.fc.out_features,
            "labels": list(net.label_names),
            "hidden": net.hidden,
        }
    else:
        raise TypeError(f"a checkpoint describes an MSRN, a baseline or a head network, not a {type(net).__name__}")
    if not arch.get("name"):  # a network built without the registry: told by its config
        arch["name"] = net.model_name or legacy_name(arch)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": arch,
        "image_size": int(image_size),
        "exif_orientation": bool(exif_orientation),
        "state_dict": net.state_dict(),
    }


def _build_from_state(ckpt: dict, where: str) -> Network:
    """Rebuild the network described by a project checkpoint and load its weights strictly."""
    arch = ckpt.get("model") or {}
    state = project_state(ckpt, where)  # older versions' keys renamed
    if arch.get("kind") not in ("msrn", "baseline", HEAD_KIND):
        raise MSRNError(f"{where}: unknown model kind {arch.get('kind')!r}")
    try:
        name = arch.get("name") or legacy_name(arch)
        if arch["kind"] == HEAD_KIND:  # a compared head: its name, backbone and settings rebuild it
            graph = {k: state[k] for k in ("word_vectors", "adjacency")} if takes_label_inputs(name) else {}
            settings = dict(arch.get("settings") or {})
            labels = arch.get("labels") or None
            model = build_model(name, arch["num_classes"], labels, backbone=arch["backbone"], **settings, **graph)
        elif arch["kind"] == "msrn":
            # older checkpoints keep the label names inside the config
            labels = arch.get("labels", arch["config"].get("labels")) or None
            settings = MSRNConfig.from_dict(arch["config"]).to_dict()
            n = settings.pop("num_classes")
            vectors, adjacency = state["word_vectors"], state["adjacency"]
            model = build_model(name, n, labels, word_vectors=vectors, adjacency=adjacency, **settings)
        else:
            model = build_model(name, arch["num_classes"], arch.get("labels") or None)
    except (KeyError, TypeError, ValueError) as e:
        raise MSRNError(f"{where}: malformed model description ({type(e).__name__}: {e})") from None
    except MSRNError as e:
        raise MSRNError(f"{where}: {e}") from None
    assert isinstance(model, (MSRN, PlainClassifier, HeadNetwork))  # what the registered entrypoints build
    load_state_strict(model, state, where)
    return model


def load_checkpoint(
    source: str | os.PathLike | dict,
    word_vectors: Any = None,
    cooccurrence: Any = None,
    labels: list[str] | None = None,
    dataset: str | None = None,
    where: str | None = None,
    head: str = "mlp",
    **settings: Any,
) -> Loaded:
    """A ready model (eval mode, CPU) from a project or a reference checkpoint (a file, or the dict that
    torch.load returns, named `where` in messages), with how it is meant to be used.

    A load reads the file (or folder), maps a reference layout to this project's keys, then builds. For project
    checkpoints the stored label vectors win: a different file passed here is ignored with a warning,
    so a model can never be paired with the wrong vectors, and `labels` must be the ones it was trained
    on. A reference checkpoint takes the reference's own files for `dataset` (or its label count) where
    none are given. `source` is a `.pt` file, a model folder (msrn.hub), a Hub id
    `hf://OWNER/NAME[@REVISION]`, or a loaded dict. A reference checkpoint loads the classifier `head`
    names (a project checkpoint records its own; old ones hold the mlp).

    The published checkpoints of ML-GCN, CSRA, ADD-GCN and Query2Label load too (msrn.models._peer_layouts), as
    the msrn model of their head; `settings` override what such a checkpoint does not record (CSRA's `lam`,
    Query2Label's `heads`), which otherwise comes from the paper's setting for `dataset` (or the data set with its
    number of labels).
    """
    where = where or (str(source) if not isinstance(source, dict) else "checkpoint")
    ckpt = read_source(source) if not isinstance(source, dict) else source
    if settings and (ckpt.get("format") == FORMAT or reference_state(ckpt) is not None):
        raise MSRNError(f"{where} records its own settings; {', '.join(sorted(settings))} apply to peer checkpoints")
    model: Network
    if ckpt.get("format") == FORMAT:
        model = _build_from_state(ckpt, where)
        if word_vectors is not None or cooccurrence is not None:
            warnings.warn(f"{where} carries its own label vectors and graph; the ones given were ignored", stacklevel=2)
        if labels is not None and list(labels) != model.labels:
            raise MSRNError(f"{where} was trained on labels {model.labels[:5]}..., not the dataset's {labels[:5]}...")
    elif (state := reference_state(ckpt)) is not None:
        model = _load_reference(state, where, word_vectors, cooccurrence, labels, dataset, head)
    elif (family := peer_of(ckpt)) is not None:
        model = _load_peer(family, ckpt, where, word_vectors, labels, dataset, settings)
    else:
        raise MSRNError(
            f"{where} is neither an msrn checkpoint nor a reference MSRN, ML-GCN, CSRA, ADD-GCN or Query2Label "
            "checkpoint"
        )
    thresholds = ckpt.get("thresholds")
    return Loaded(
        model=model.eval(),
        image_size=int(ckpt.get("image_size", UNRECORDED_IMAGE_SIZE)),
        thresholds=None if thresholds is None else np.asarray(thresholds, dtype=np.float32),
        # older and reference checkpoints record no decoding: a person's photo is then shown upright
        exif_orientation=bool(ckpt.get("exif_orientation", True)),
    )
