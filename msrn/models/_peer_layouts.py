"""The published checkpoints of the heads compared with MSRN, told apart by their keys and mapped to msrn's:

- ML-GCN (megvii-research/ML-GCN): `{'epoch','arch','state_dict','best_score'}`; torchvision's ResNet as
  `features.0/1/4-7` (conv1, bn1, layer1-4), the GCN weights `gc1.weight` (w x 1024), `gc2.weight`
  (1024 x 2048), no bias, and `A`, the re-weighted graph before normalisation. The word vectors are not in it:
  they are ML-GCN's GloVe pickles, byte-identical to the reference MSRN's, so they come the same way.
- CSRA (Kevinz-code/CSRA): a bare state dict of torchvision's ResNet (`conv1`, `bn1`, `layer1-4`; its `fc` is
  removed) and `classifier.multi_head.<h>.head.weight` (C x 2048 x 1 x 1) per head. The number of heads is in
  the keys; lambda is not, so it comes from the published setting for the data set (COCO 0.5, VOC 0.1).
  CSRA's COCO outputs are in COCO's category-id order (its prepare_coco.py), not the reference's, and its images
  are [0, 1] pixels (its dataset normalises with mean 0, std 1): the model takes `pixels="unit"`.
- ADD-GCN (Yejin0111/ADD-GCN): `{'epoch','model_name','state_dict','best_score'}`, `features.*` as ML-GCN,
  `fc.weight` (the SAM's conv), `conv_transform.*`, `gcn.*` (1x1 Conv1d layers) and `last_linear.*`; its
  `mask_mat` is the identity, read only on its diagonal, and is dropped.
- Query2Label (SlongLiu/query2labels): `{'epoch','state_dict',...}`; `backbone.0.body.*` (torchvision's ResNet
  with frozen batch norms: no `num_batches_tracked`), `backbone.1.pe` (the sine encoding precomputed for the
  training size: dropped, msrn computes the same for any size), `query_embed.weight`, `fc.W` (1 x C x D),
  `fc.b`, DETR's `transformer.encoder.layers.<i>.{self_attn,linear1,linear2,norm1,norm2}` and
  `transformer.decoder.layers.<i>.{multihead_attn,linear1,linear2,norm2,norm3}` (self-attention and norm1
  removed, its default) and `transformer.decoder.norm`; `input_proj` only when it is not the identity. The number
  of attention heads is not recorded (4 in the published ResNet-101 models). Its COCO outputs are in COCO's
  category-id order.

`dataset_settings` gives what a head's paper published per data set (CSRA's heads and lambda), for these loads
and for `msrn train`.

A key that has no place in the msrn model is named (dropped, with a notice, or refused); none is silently lost.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from msrn.errors import MSRNError
from msrn.models.csra import PAPER_SETTINGS as CSRA_SETTINGS

# settings a head's paper publishes per data set, by model-name prefix (what a run or a peer checkpoint takes
# unless given)
DATASET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {"csra_": CSRA_SETTINGS}


def dataset_settings(name: str, dataset: str | None) -> dict[str, Any]:
    """The settings the paper of model `name` published for `dataset` (empty when it published none)."""
    for prefix, table in DATASET_SETTINGS.items():
        if name.startswith(prefix) and dataset in table:
            return dict(table[dataset])
    return {}


# torchvision's ResNet wrapped in nn.Sequential as ML-GCN and ADD-GCN keep it: index -> name
SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# the COCO labels in category-id order (CSRA's output order), in msrn's spelling
COCO_ID_ORDER = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
# 1x1 Conv1d weights of ADD-GCN's graph module -> msrn's Linear layers
ADDGCN_NAMES = {
    "fc.": "sam.",
    "conv_transform.": "transform.",
    "gcn.static_adj.0.": "static_adj.",
    "gcn.static_weight.0.": "static_weight.",
    "gcn.conv_global.": "global_fc.",
    "gcn.bn_global.": "global_bn.",
    "gcn.conv_create_co_mat.": "adj_fc.",
    "gcn.dynamic_weight.": "dynamic_weight.",
    "last_linear.": "last.",
}


def _state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint dict (inside `state_dict` or bare), without DataParallel's `module.`."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt.get("state_dict"), dict) else ckpt
    return {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def peer_of(ckpt: dict) -> str | None:
    """The head whose published checkpoint this is (mlgcn, csra, addgcn, q2l), or None."""
    keys = set(_state(ckpt))
    if {"gc1.weight", "gc2.weight", "A"} <= keys:
        return "mlgcn"
    if "classifier.multi_head.0.head.weight" in keys:
        return "csra"
    if {"gcn.static_adj.0.weight", "mask_mat", "last_linear.weight"} <= keys:
        return "addgcn"
    if {"query_embed.weight", "fc.W"} <= keys and any(k.startswith("transformer.decoder.") for k in keys):
        return "q2l"
    return None


def _q2l_key(key: str) -> str | None:
    """msrn's name of a Query2Label head key, else None."""
    m = re.fullmatch(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.+)", key)
    if m:
        part, n, module, rest = m.groups()
        attention = "self_attn" if part == "encoder" else "multihead_attn"
        norms = {"norm1": "norm1", "norm2": "norm2"} if part == "encoder" else {"norm2": "norm1", "norm3": "norm2"}
        if module == attention:
            return f"{part}.{n}.attn.{rest}"
        if module in ("linear1", "linear2"):
            return f"{part}.{n}.ffn.{module}.{rest}"
        return f"{part}.{n}.{norms[module]}.{rest}" if module in norms else None
    fixed = {"query_embed.weight": "queries.weight", "fc.W": "out_weight", "fc.b": "out_bias"}
    if key in fixed:
        return fixed[key]
    if key.startswith(("transformer.decoder.norm.", "input_proj.")):
        return key.replace("transformer.decoder.norm.", "decoder_norm.")
    return None


def _backbone_key(key: str) -> str | None:
    """msrn's `backbone.*` name of a torchvision ResNet key in the Sequential or the plain layout, else None."""
    m = re.match(r"features\.(\d+)\.(.+)", key)
    if m:
        return f"backbone.{SEQUENTIAL_RESNET[m[1]]}.{m[2]}" if m[1] in SEQUENTIAL_RESNET else None
    if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")):
        return "backbone." + key
    return None


def backbone_arch(state: dict[str, torch.Tensor], where: str) -> str:
    """resnet101, resnet50 or resnet18 from the mapped keys' layer3 blocks and block type."""
    blocks = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}
    bottleneck = any(k.startswith("backbone.layer3.0.conv3.") for k in state)
    arch = {(23, True): "resnet101", (6, True): "resnet50", (2, False): "resnet18"}.get((len(blocks), bottleneck))
    if arch is None:
        raise MSRNError(f"{where}: a ResNet with {len(blocks)} layer3 blocks, which msrn does not build")
    return arch


def map_peer_state(family: str, ckpt: dict, where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A peer checkpoint's weights under msrn's names, and the keys dropped (named, for the notice)."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in _state(ckpt).items():
        if family == "q2l" and key.startswith("backbone.0.body."):
            key = key.removeprefix("backbone.0.body.")
        new = _backbone_key(key)
        if new is not None:
            out[new] = value
        elif family == "mlgcn" and key in ("gc1.weight", "gc2.weight"):
            out[key.removesuffix(".weight")] = value
        elif family == "mlgcn" and key == "A":
            out["adjacency"] = value.float()
        elif family == "csra" and (m := re.fullmatch(r"classifier\.multi_head\.(\d+)\.head\.weight", key)):
            out[f"heads.{m[1]}.weight"] = value
        elif family == "addgcn" and key == "mask_mat":
            if not torch.equal(value.float(), torch.eye(value.shape[0])):
                raise MSRNError(f"{where}: mask_mat is not the identity, which ADD-GCN's code keeps it as")
            dropped.append(key)
        elif family == "addgcn" and (prefix := next((p for p in ADDGCN_NAMES if key.startswith(p)), None)):
            name = ADDGCN_NAMES[prefix] + key.removeprefix(prefix)
            out[name] = value.squeeze(-1) if value.dim() == 3 else value  # Conv1d k=1 -> Linear
        elif family == "q2l" and (q2l_name := _q2l_key(key)) is not None:
            out[q2l_name] = value[0] if key in ("fc.W", "fc.b") else value  # the group-wise linear's leading 1
        else:
            dropped.append(key)
    for key in [k for k in out if k.startswith("backbone.") and k.endswith(".running_mean")]:
        # frozen batch norms (Query2Label's) keep no update count; msrn's batch norms start theirs at 0
        out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    return out, dropped
