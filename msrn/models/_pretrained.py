"""Backbone weights: ImageNet weights (a local file or a URL fetched once into a cache with a SHA-256
check), the backbone of a reference or msrn checkpoint, or a timm backbone's weights through timm."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import cast

import torch
from torch import nn

from msrn.checkpoint import FORMAT
from msrn.download import fetch
from msrn.errors import MSRNError
from msrn.hub import read_source
from msrn.models._loading import load_state_strict
from msrn.models._peer_layouts import peer_of
from msrn.models._reference_layout import checkpoint_weights, is_reference
from msrn.models._state import backbone_weights, require_backbone
from msrn.models.resnet import ResNet
from msrn.models.timm_backbone import PREFIX, TimmBackbone

log = logging.getLogger(__name__)

# torchvision's files, named <arch>-<first 8 hex digits of their SHA-256>.pth
IMAGENET_URLS = {
    "resnet101": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-5c106cde.pth",
}


def load_imagenet_state(model: ResNet, state: dict[str, torch.Tensor], where: str | None = None) -> None:
    """Load an ImageNet classification state dict; fc.* is dropped, any other mismatch is an error."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    load_state_strict(model, state, where or "ImageNet weights")


def load_checkpoint_backbone(model: nn.Module, ckpt: dict, where: str) -> str:
    """Load the backbone of a reference or msrn checkpoint into `model` (a ResNet or a network with
    `.backbone`), strictly, with the added 1x1 convolutions (the reference's conv_buffer1/2) where both sides
    have them; returns what was taken."""
    state, arch, _ = checkpoint_weights(ckpt, where)
    require_backbone(arch, model, where)
    resnet = getattr(model, "backbone", model)
    weights, extras = backbone_weights(state)
    load_state_strict(resnet, weights, f"the backbone of {where}")
    own = getattr(model, "depth_conv", None)
    if own is not None and extras:
        load_state_strict(own, extras, f"conv_buffer1/2 of {where}")
        taken = " and conv_buffer1/2"
    elif own is not None:
        taken = " (conv_buffer1/2 start afresh: the checkpoint has none)"
    else:
        taken = " (its conv_buffer1/2 are not used: the model has none)" if extras else ""
    kind = "reference MSRN" if is_reference(ckpt) else (peer_of(ckpt) or "msrn")
    return (
        f"the {resnet.arch} backbone ({len(weights)} tensors){taken} of the {kind} checkpoint {where}; "
        "its other layers are not used"
    )


def load_pretrained_backbone(model: nn.Module, source: str | Path) -> str:
    """Load a backbone into `model` (a ResNet or a network with `.backbone`) and return what was taken.

    `source`: ImageNet weights (a path, a URL, or 'imagenet' for torchvision's file), or a reference, peer
    (ML-GCN, CSRA, ADD-GCN, Query2Label) or msrn checkpoint, whose backbone and conv_buffer1/2 are taken (the
    paper's VOC 96.0 recipe starts from its COCO model this way).
    """
    resnet = cast(ResNet, getattr(model, "backbone", model))  # MSRN reads a ResNet; a bare ResNet is one
    src = str(source)
    if src == "imagenet":
        if resnet.arch not in IMAGENET_URLS:
            raise MSRNError(f"no ImageNet weights are published for {resnet.arch}; use --pretrained none")
        src = IMAGENET_URLS[resnet.arch]
    path = fetch(src) if re.match(r"^(https?|file)://", src) else src
    ckpt = read_source(path)  # a .pt, a model folder or hf://
    if ckpt.get("format") == FORMAT or is_reference(ckpt) or peer_of(ckpt) is not None:
        taken = load_checkpoint_backbone(model, ckpt, str(path))
    else:
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt.get("state_dict"), dict) else ckpt
        load_imagenet_state(resnet, state, str(path))
        taken = f"the {resnet.arch} backbone of the ImageNet weights {path} (fc dropped)"
    log.info("--pretrained: %s", taken)
    return taken


def load_timm_pretrained(backbone: TimmBackbone, source: str | Path) -> None:
    """ImageNet weights through timm's own mechanism: "imagenet" (timm's hub) or a local timm weight file."""
    name = backbone.arch.removeprefix(PREFIX)
    file = None if str(source) == "imagenet" else Path(source)
    if file is not None and not file.is_file():
        raise MSRNError(f"--pretrained {file}: file not found (or give 'imagenet' for timm's own weights)")
    try:
        source_net = TimmBackbone(name, pretrained=file is None, file=file)
    except (OSError, RuntimeError) as e:  # no network for the hub, or a file of another model
        raise MSRNError(f"cannot load timm weights for {name!r} from {source}: {e}") from None
    backbone.body.load_state_dict(source_net.body.state_dict(), strict=True)
