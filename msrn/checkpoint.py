"""Checkpoint files without model knowledge: reading them safely, strict state loading, key mapping.

Everything loads with `weights_only=True` (read_checkpoint), so a file cannot run code. Reference
checkpoints (keys `resnet_101.*`) are mapped to this project's key names; only the unused
`conv_buffer0`, `W`, `B` and `ProjectMs` may be dropped. Either kind can start training: its
backbone (`--pretrained`, msrn.models.pretrained) or every weight that fits the new label set
(`--init`, match_init_state). Building a model from a checkpoint is msrn.models.loading's job.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from msrn.errors import MSRNError

FORMAT = "msrn"
VERSION = 1
# reference keys that have no counterpart in the model and may be dropped (with a notice)
REFERENCE_UNUSED = ("resnet_101.conv_buffer0.", "W", "B", "ProjectMs.")
# a reference checkpoint holds both classifiers' weights: the element-wise head's W and B, the MLP's fc1 and fc2
UNUSED_BY_ELEMENTWISE = ("resnet_101.conv_buffer0.", "fc1.", "fc2.", "ProjectMs.")


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


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True; unreadable, truncated or code-carrying files give one line
    calling the file a `what` (a checkpoint, a label set: any dict that torch.save wrote)."""
    path = Path(path)
    if not path.is_file():
        raise MSRNError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol notice would precede the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _refusal_reason(str(e))
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # the PROTO opcode that starts a protocol 2+ pickle
        if not pickled and "GLOBAL" not in str(e):  # bytes that are no pickle at all
            raise MSRNError(f"{path} is not a readable {what} (truncated, corrupt or another format): "
                            f"{reason}") from None
        raise MSRNError(f"{path} is not a tensors-only {what} (it may carry code); refusing to load it "
                        f"({reason})") from None
    except Exception as e:  # weights_only loading runs no foreign code; a damaged file fails in many ways
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MSRNError(f"{path} is not a readable {what} (truncated or corrupt?): {first}") from None
    if not isinstance(obj, dict):
        raise MSRNError(f"{path} is not a {what}: expected a dict, found {type(obj).__name__}")
    return obj


def is_reference(ckpt: dict) -> bool:
    state = ckpt.get("state_dict", ckpt)
    return isinstance(state, dict) and any(str(k).startswith("resnet_101.") for k in state)


def map_reference_state(
    state: dict[str, torch.Tensor], head: str = "mlp"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename reference keys to this project's; return (mapped state, dropped unused keys). The head says
    which classifier's weights are kept: mlp (fc1, fc2) or elementwise (W, B)."""
    unused = UNUSED_BY_ELEMENTWISE if head == "elementwise" else REFERENCE_UNUSED
    out, dropped = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in unused or key.startswith(tuple(p for p in unused if p.endswith("."))):
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
        return mapped, reference_backbone(state), dropped
    raise MSRNError(f"{where} is neither an msrn checkpoint nor a reference MSRN checkpoint")


def reference_backbone(state: dict[str, torch.Tensor]) -> str:
    """The torchvision name of a reference state's backbone, told by its number of layer3 blocks."""
    blocks = {k.split(".")[2] for k in state if k.startswith("resnet_101.layer3.")}
    return {23: "resnet101", 6: "resnet50"}.get(len(blocks), f"resnet with {len(blocks)} layer3 blocks")
