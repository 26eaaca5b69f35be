"""Checkpoints: strict state loading, the project's self-contained format, and the reference's.

Project checkpoints are dicts with `format: "msrn"`: the model config (label names included),
the weights (word vectors and adjacency are buffers, so they travel inside), the co-occurrence
counts the graph came from, optional per-label thresholds and, for `last.pt`, the training state.
Reference checkpoints (`{'epoch','arch','state_dict','best_score'}`, keys `resnet_101.*`) load
into the same module with their keys mapped; only the unused `conv_buffer0`, `W`, `B` and
`ProjectMs` may be dropped, and the loader says so. Everything loads with `weights_only=True`.
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

FORMAT = "msrn"
VERSION = 1
# reference keys that have no counterpart in the model and may be dropped (with a notice)
REFERENCE_UNUSED = ("resnet_101.conv_buffer0.", "W", "B", "ProjectMs.")


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict that fails with one line naming missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
            problems.append(f"{len(keys)} {title}: {shown}")
    if problems:
        raise MSRNError(f"{where} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


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


def _reference_backbone(state: dict[str, torch.Tensor]) -> str:
    blocks = {k.split(".")[2] for k in state if k.startswith("resnet_101.layer3.")}
    return {23: "resnet101", 6: "resnet50"}.get(len(blocks), f"resnet with {len(blocks)} layer3 blocks")


def load_reference(
    ckpt: dict,
    word_vectors: Any,
    cooccurrence: Any,
    labels: list[str] | None = None,
    where: str = "reference checkpoint",
) -> nn.Module:
    """Build msrn_resnet101 (or 50) from a reference checkpoint plus its word-vector and adj pickles."""
    from msrn.models import create_model

    state = ckpt.get("state_dict", ckpt)
    if word_vectors is None or cooccurrence is None:
        raise MSRNError(
            f"{where} is a reference MSRN checkpoint, which holds no label vectors or graph: give the "
            "reference's word-vector pickle (--word-vectors) and co-occurrence pickle (--cooccurrence)"
        )
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
                "labels": list(model.label_names), "hidden": model.hidden}
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
            model = PlainClassifier(arch["backbone"], arch["num_classes"], arch.get("labels"), arch.get("hidden", 0))
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
) -> nn.Module:
    """A ready model (eval mode, CPU) from a project checkpoint or a reference checkpoint.

    For project checkpoints the stored label vectors win: a different file passed here is
    ignored with a warning, so a model can never be paired with the wrong vectors.
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
        model = load_reference(ckpt, word_vectors, cooccurrence, labels, where)
    else:
        raise MSRNError(f"{where} is neither an msrn checkpoint nor a reference MSRN checkpoint")
    model.image_size = int(ckpt.get("image_size", 448))  # reference checkpoints were trained at 448
    thresholds = ckpt.get("thresholds")
    if thresholds is not None:
        model.register_buffer("thresholds", torch.as_tensor(thresholds, dtype=torch.float32), persistent=False)
    return model.eval()

