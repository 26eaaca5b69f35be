"""Older checkpoint layouts mapped onto the model's key names, in this one place (as timm's checkpoint_filter_fn).

- The reference's files (`{'epoch','arch','state_dict','best_score'}`): the backbone is `resnet_101.*` there,
  its added `resnet_101.conv_buffer{1,2}` sit inside it, and the other modules have the reference's names
  (RENAMED). Only the unused `conv_buffer0` and `ProjectMs`, and the classifier the model does not have (the
  MLP's `fc1`/`fc2` or the element-wise `W`/`B`: the reference holds both), may be dropped, with a notice.
- msrn checkpoints of version 1 kept the reference's names under `backbone.*` (`upgrade_state`), and recorded
  no model name (`legacy_name`).

A load reads the file (msrn.checkpoint), maps it here, then builds the model through the registry.
"""

from __future__ import annotations

import torch

from msrn.checkpoint import FORMAT
from msrn.errors import MSRNError
from msrn.models._peer_layouts import backbone_arch, map_peer_state, peer_of

# the reference's module names (kept by msrn's version-1 checkpoints) -> the model's, by key prefix
RENAMED = (
    ("conv_buffer1.", "depth_conv.0."),
    ("conv_buffer2.", "depth_conv.1."),
    ("ProjectM.", "project."),
    ("fc_label.", "word_proj."),
    ("label_embed.", "label_gat."),
    ("group_embed.layers.0.embed.", "group_pool.embed."),
    ("group_embed.layers.0.assign_mat.", "group_pool.assign."),
    ("fc1.", "head.fc1."),
    ("fc2.", "head.fc2."),
    ("W", "head.W"),  # the element-wise head's parameters, whole keys
    ("B", "head.B"),
)
# reference keys the model leaves unused, by its head: dropped with a notice (the reference holds both heads)
UNUSED_BY_HEAD = {
    "mlp": ("resnet_101.conv_buffer0.", "W", "B", "ProjectMs."),
    "elementwise": ("resnet_101.conv_buffer0.", "fc1.", "fc2.", "ProjectMs."),
}


def rename_key(key: str) -> str:
    """A key under the reference's module names as the model names it (other keys as they are)."""
    for old, new in RENAMED:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old) :]
    return key


def upgrade_state(state: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """An msrn checkpoint's state under the current key names (version 1 kept the reference's names)."""
    return {rename_key(k): v for k, v in state.items()} if version < 2 else dict(state)


def project_state(ckpt: dict, where: str) -> dict[str, torch.Tensor]:
    """The weights of an msrn checkpoint (format "msrn", any version) under the current key names."""
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise MSRNError(f"{where} has no state_dict")
    return upgrade_state(state, int(ckpt.get("version", 1)))


def reference_state(ckpt: dict) -> dict[str, torch.Tensor] | None:
    """A checkpoint dict's (or a bare state's) weights under the reference's key names, without the `module.`
    that a save under DataParallel or DistributedDataParallel puts before every key; None if not that layout."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        return None
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    return state if any(k.startswith("resnet_101.") for k in state) else None


def is_reference(ckpt: dict) -> bool:
    """Whether a checkpoint dict (or a bare state) has the reference's layout, saved wrapped or not."""
    return reference_state(ckpt) is not None


def map_reference_state(state: dict[str, torch.Tensor], head: str = "mlp") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename reference keys (as reference_state gives them) to the model's; return (mapped state, dropped
    unused keys). The head says which classifier's weights are kept: mlp (fc1, fc2) or elementwise (W, B)."""
    unused = UNUSED_BY_HEAD.get(head, UNUSED_BY_HEAD["mlp"])
    out, dropped = {}, []
    for key, value in state.items():
        if key in unused or key.startswith(tuple(p for p in unused if p.endswith("."))):
            dropped.append(key)
        elif key.startswith("resnet_101.conv_buffer"):  # the reference's added convolutions sit in its backbone
            out[rename_key(key.removeprefix("resnet_101."))] = value
        elif key.startswith("resnet_101."):
            out["backbone." + key.removeprefix("resnet_101.")] = value
        else:
            out[rename_key(key)] = value
    return out, dropped


def checkpoint_weights(
    ckpt: dict, where: str, head: str = "mlp"
) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """An msrn or reference checkpoint's weights under the model's key names, the backbone it holds
    (None if not recorded) and the reference's unused keys that were dropped. `head` is the classifier of
    the model the weights go to: a reference checkpoint holds both, and that one's weights are kept."""
    if ckpt.get("format") == FORMAT:
        arch = ckpt.get("model") or {}
        return project_state(ckpt, where), (arch.get("config") or {}).get("backbone") or arch.get("backbone"), []
    state = reference_state(ckpt)
    if state is not None:
        mapped, dropped = map_reference_state(state, head)
        return mapped, reference_backbone(state), dropped
    family = peer_of(ckpt)
    if family is not None:  # a published ML-GCN, CSRA, ADD-GCN or Query2Label checkpoint
        mapped, dropped = map_peer_state(family, ckpt, where)
        return mapped, backbone_arch(mapped, where), dropped
    raise MSRNError(
        f"{where} is neither an msrn checkpoint nor a reference MSRN, ML-GCN, CSRA, ADD-GCN or Query2Label checkpoint"
    )


def reference_backbone(state: dict[str, torch.Tensor]) -> str:
    """The torchvision name of a reference state's backbone, told by its number of layer3 blocks."""
    blocks = {k.split(".")[2] for k in state if k.startswith("resnet_101.layer3.")}
    return {23: "resnet101", 6: "resnet50"}.get(len(blocks), f"resnet with {len(blocks)} layer3 blocks")


# the registered name of a model described by a checkpoint written before names were recorded (version 1)
LEGACY_MSRN_NAMES = {"resnet101": "msrn_resnet101", "resnet50": "msrn_resnet50", "resnet18": "msrn_resnet18"}
LEGACY_BASELINE_NAMES = {
    ("resnet101", 0): "baseline_resnet101",
    ("resnet50", 0): "baseline_resnet50",
    ("resnet18", 0): "baseline_resnet18",
    ("resnet_tiny", 0): "baseline_tiny",
    ("resnet_tiny", 6912): "baseline_mlp_tiny",
}


def legacy_name(arch: dict) -> str:
    """The registered name that rebuilds a model description without one (an MSRN's whole config is given too)."""
    if arch["kind"] == "msrn":
        backbone = arch["config"].get("backbone", "resnet101")
        if backbone.startswith("timm:"):
            return "msrn_timm"
        return LEGACY_MSRN_NAMES.get(backbone, "msrn_tiny")  # every config field is given: only the name is chosen
    key = (arch["backbone"], int(arch.get("hidden", 0)))
    if key not in LEGACY_BASELINE_NAMES:
        raise ValueError(f"no baseline has a {key[0]} backbone with {key[1]} hidden units")
    return LEGACY_BASELINE_NAMES[key]
