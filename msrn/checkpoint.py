"""Checkpoints: strict state loading, the project's self-contained format, and the reference's.

Project checkpoints are dicts with `format: "msrn"`: the model config (label names included),
the weights (word vectors and adjacency are buffers, so they travel inside), the co-occurrence
counts the graph came from, optional per-label thresholds and, for `last.pt`, the training state.
Reference checkpoints (`{'epoch','arch','state_dict','best_score'}`, keys `resnet_101.*`) load
into the same module with their keys mapped; only the unused `conv_buffer0`, `W`, `B` and
`ProjectMs` may be dropped, and the loader says so. Everything loads with `weights_only=True`.
Either kind can also start training: its backbone (`--pretrained`) or every weight that fits the
new label set (`--init`, match_init_state).
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msrn.errors import MSRNError
from msrn.labels.reference_files import LABELS as REFERENCE_LABELS
from msrn.labels.reference_files import REFERENCE, check_label_order, dataset_for_classes, reference_file

FORMAT = "msrn"
VERSION = 1
# reference keys that have no counterpart in the model and may be dropped (with a notice)
REFERENCE_UNUSED = ("resnet_101.conv_buffer0.", "W", "B", "ProjectMs.")


# buffers a run builds from its own label set: --init never takes them from the checkpoint
LABEL_INPUTS = ("word_vectors", "adjacency")
# layers whose shapes follow the label set (C labels, K groups, word-vector width); every other shape is architecture
LABEL_LAYERS = re.compile(r"(fc_label|fc1|fc2|fc|group_embed\.layers\.\d+\.assign_mat)\.[^.]+")
# the reference keeps these inside its backbone module (`resnet_101.conv_buffer1`), so a backbone carries them
BACKBONE_EXTRAS = ("conv_buffer1", "conv_buffer2")


def _misfit(where: str, missing: list[str], unexpected: list[str], shapes: list[str], hint: str = "") -> None:
    """Raise one line naming the missing, unexpected and mis-shaped keys, if there are any."""
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
            problems.append(f"{len(keys)} {title}: {shown}")
    if problems:
        raise MSRNError(f"{where} does not fit the model: " + "; ".join(problems) + hint)


def _shape_misfits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keys: list[str]) -> list[str]:
    return [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys
            if tuple(state[k].shape) != tuple(own[k].shape)]


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict that fails with one line naming missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    _misfit(where, missing, unexpected, _shape_misfits(own, state, [k for k in own if k in state]))
    module.load_state_dict(state, strict=True)


def match_init_state(
    own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state that starts a freshly built model from a checkpoint's weights (`--init`), and the layers
    left as the fresh model has them.

    A layer shaped by the label set (LABEL_LAYERS) whose shapes differ from the checkpoint's stays fresh;
    the label inputs always stay the fresh model's. A key on one side only, or any other shape
    difference (another architecture), is an error naming the keys.
    """
    keys = [k for k in own if k not in LABEL_INPUTS]
    missing = [k for k in keys if k not in given]
    unexpected = [k for k in given if k not in own and k not in LABEL_INPUTS]
    misfits = [k for k in keys if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    fresh = sorted({k.rsplit(".", 1)[0] for k in misfits if LABEL_LAYERS.fullmatch(k)})
    architecture = [k for k in misfits if not LABEL_LAYERS.fullmatch(k)]
    _misfit(where, missing, unexpected, _shape_misfits(own, given, architecture),
            " (--init needs a checkpoint of the same --model; only layers shaped by the label set may differ)")
    state = {k: own[k] if k in LABEL_INPUTS or k.rsplit(".", 1)[0] in fresh else given[k] for k in own}
    return state, fresh


def require_backbone(arch: str | None, model: nn.Module, where: str) -> None:
    """One line when a checkpoint holds another backbone than the model's (e.g. resnet50 for resnet101)."""
    resnet = getattr(model, "backbone", model)
    if arch is not None and arch != resnet.arch:
        raise MSRNError(f"{where} holds a {arch} backbone but the model's is {resnet.arch}: choose the --model "
                        f"built on {arch}")


def backbone_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model state's backbone weights (without the `backbone.` prefix) and its conv_buffer1/2 weights."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    extras = {k: v for k, v in state.items() if k.split(".", 1)[0] in BACKBONE_EXTRAS}
    return backbone, extras


def _refusal_reason(message: str) -> str:
    """The informative part of torch's weights_only error, without its advice to load unsafely or allowlist."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)|(Trying to load unsupported GLOBAL.+)", message)
    if found:
        reason = found.group(1) or found.group(2)
    else:
        lines = message.strip().splitlines()
        reason = lines[-1] if lines else ""
    return reason.split(" Please use")[0].strip() or "not a tensors-only pickle"


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True; unreadable, truncated or code-carrying files give one line."""
    path = Path(path)
    if not path.is_file():
        raise MSRNError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol notice would precede the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _refusal_reason(str(e))
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # the PROTO opcode that starts a protocol 2+ pickle
        if not pickled and "GLOBAL" not in str(e):  # bytes that are no pickle at all
            raise MSRNError(f"{path} is not a readable checkpoint (truncated, corrupt or another format): "
                            f"{reason}") from None
        raise MSRNError(f"{path} is not a tensors-only checkpoint (it may carry code); refusing to load it "
                        f"({reason})") from None
    except Exception as e:  # weights_only loading runs no foreign code; a damaged file fails in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MSRNError(f"{path} is not a readable checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(obj, dict):
        raise MSRNError(f"{path} is not a checkpoint: expected a dict, found {type(obj).__name__}")
    return obj


def is_reference(ckpt: dict) -> bool:
    state = ckpt.get("state_dict", ckpt)
    return isinstance(state, dict) and any(str(k).startswith("resnet_101.") for k in state)


def map_reference_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename reference keys to this project's; return (mapped state, dropped unused keys)."""
    out, dropped = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in REFERENCE_UNUSED or key.startswith(tuple(p for p in REFERENCE_UNUSED if p.endswith("."))):
            dropped.append(key)
        elif key.startswith("resnet_101.conv_buffer"):
            out[key.removeprefix("resnet_101.")] = value
        elif key.startswith("resnet_101."):
            out["backbone." + key.removeprefix("resnet_101.")] = value
        else:
            out[key] = value
    return out, dropped


def checkpoint_weights(ckpt: dict, where: str) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """An msrn or reference checkpoint's weights under this project's key names, the backbone it holds
    (None if not recorded) and the reference's unused keys that were dropped."""
    if ckpt.get("format") == FORMAT:
        state = ckpt.get("state_dict")
        if not isinstance(state, dict):
            raise MSRNError(f"{where} has no state_dict")
        arch = ckpt.get("model") or {}
        return dict(state), (arch.get("config") or {}).get("backbone") or arch.get("backbone"), []
    if is_reference(ckpt):
        state = ckpt.get("state_dict", ckpt)
        mapped, dropped = map_reference_state(state)
        return mapped, _reference_backbone(state), dropped
    raise MSRNError(f"{where} is neither an msrn checkpoint nor a reference MSRN checkpoint")


def _reference_backbone(state: dict[str, torch.Tensor]) -> str:
    blocks = {k.split(".")[2] for k in state if k.startswith("resnet_101.layer3.")}
    return {23: "resnet101", 6: "resnet50"}.get(len(blocks), f"resnet with {len(blocks)} layer3 blocks")


def load_reference(
    ckpt: dict,
    word_vectors: Any,
    cooccurrence: Any,
    labels: list[str] | None = None,
    where: str = "reference checkpoint",
    dataset: str | None = None,
) -> nn.Module:
    """Build msrn_resnet101 (or 50) from a reference checkpoint plus its word-vector and adj pickles.

    A pickle not given (or given as 'reference') is the reference's own for the checkpoint's
    dataset: `dataset`, else the one with its number of labels. Without `labels` the outputs are
    named after that dataset's labels, in the reference's order.
    """
    from msrn.models import create_model

    state = ckpt.get("state_dict", ckpt)
    try:
        num_classes = state["fc2.weight"].shape[0]
        num_groups = state["group_embed.layers.0.assign_mat.W"].shape[1]
    except KeyError as e:
        raise MSRNError(f"{where} lacks {e.args[0]}; not an MSRN checkpoint") from None
    backbone = _reference_backbone(state)
    name = {"resnet101": "msrn_resnet101", "resnet50": "msrn_resnet50"}.get(backbone)
    if name is None:
        raise MSRNError(f"{where}: unsupported backbone ({backbone})")
    if labels is not None and len(labels) != num_classes:
        raise MSRNError(f"{where} has {num_classes} labels but the dataset has {len(labels)}")
    known = dataset if dataset is not None else dataset_for_classes(num_classes)
    wanted = [kind for kind, src in (("word_vectors", word_vectors), ("cooccurrence", cooccurrence))
              if src is None or (isinstance(src, str) and src == REFERENCE)]
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
    files = {kind: reference_file(known, kind) for kind in wanted}
    word_vectors = files.get("word_vectors", word_vectors)
    cooccurrence = files.get("cooccurrence", cooccurrence)
    model = create_model(
        name, num_classes=num_classes, labels=labels, num_groups=num_groups,
        word_vectors=word_vectors, cooccurrence=cooccurrence,
    )
    mapped, dropped = map_reference_state(state)
    load_state_strict(model, {**mapped, "word_vectors": model.word_vectors, "adjacency": model.adjacency}, where)
    if dropped:
        warnings.warn(f"{where}: dropped unused reference parameters: {', '.join(dropped)}", stacklevel=2)
    return model


def model_state(model: nn.Module, image_size: int) -> dict[str, Any]:
    """The model part of a project checkpoint (weights, config, labels, input size)."""
    from msrn.models.msrn import MSRN

    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if isinstance(model, MSRN):
        arch = {"kind": "msrn", "config": model.cfg.to_dict()}
    else:
        arch = {"kind": "baseline", "backbone": model.backbone.arch, "num_classes": model.fc.out_features,
                "labels": list(model.label_names)}
    return {"format": FORMAT, "version": VERSION, "model": arch, "image_size": int(image_size),
            "state_dict": model.state_dict()}


def build_from_state(ckpt: dict, where: str) -> nn.Module:
    """Rebuild the network described by a project checkpoint and load its weights strictly."""
    from msrn.models.msrn import MSRN, MSRNConfig, PlainClassifier

    arch = ckpt.get("model") or {}
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise MSRNError(f"{where} has no state_dict")
    try:
        if arch.get("kind") == "msrn":
            cfg = MSRNConfig.from_dict(arch["config"])
            model = MSRN(cfg, state["word_vectors"], state["adjacency"])
        elif arch.get("kind") == "baseline":
            model = PlainClassifier(arch["backbone"], arch["num_classes"], arch.get("labels"))
        else:
            raise MSRNError(f"{where}: unknown model kind {arch.get('kind')!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise MSRNError(f"{where}: malformed model description ({type(e).__name__}: {e})") from None
    load_state_strict(model, state, where)
    return model


def load_model(
    source: str | Path | dict,
    word_vectors: Any = None,
    cooccurrence: Any = None,
    labels: list[str] | None = None,
    dataset: str | None = None,
) -> nn.Module:
    """A ready model (eval mode, CPU) from a project checkpoint or a reference checkpoint.

    For project checkpoints the stored label vectors win: a different file passed here is
    ignored with a warning, so a model can never be paired with the wrong vectors. A reference
    checkpoint takes the reference's own files for `dataset` (or its label count) where none are given.
    """
    where = str(source) if not isinstance(source, dict) else "checkpoint"
    ckpt = read_checkpoint(source) if not isinstance(source, dict) else source
    if ckpt.get("format") == FORMAT:
        model = build_from_state(ckpt, where)
        if word_vectors is not None or cooccurrence is not None:
            warnings.warn(
                f"{where} carries its own label vectors and graph; the ones given were ignored", stacklevel=2
            )
        if labels is not None and hasattr(model, "cfg") and list(labels) != model.labels:
            raise MSRNError(f"{where} was trained on labels {model.labels[:5]}..., not the dataset's {labels[:5]}...")
    elif is_reference(ckpt):
        model = load_reference(ckpt, word_vectors, cooccurrence, labels, where, dataset)
    else:
        raise MSRNError(f"{where} is neither an msrn checkpoint nor a reference MSRN checkpoint")
    model.image_size = int(ckpt.get("image_size", 448))  # reference checkpoints were trained at 448
    thresholds = ckpt.get("thresholds")
    if thresholds is not None:
        model.register_buffer("thresholds", torch.as_tensor(thresholds, dtype=torch.float32), persistent=False)
    return model.eval()

