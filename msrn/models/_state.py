"""Model states against models: the state that starts a run from another checkpoint's weights (`--init`), and a
state's backbone part (`--pretrained`). Strict loading itself is _loading.load_state_strict."""

from __future__ import annotations

import re

import torch
from torch import nn

from msrn.errors import MSRNError
from msrn.models._loading import misfit, shape_misfits

# buffers a run builds from its own label set: --init never takes them from the checkpoint
LABEL_INPUTS = ("word_vectors", "adjacency")
# layers whose shapes follow the label set (C labels, K groups, word-vector width); every other shape is architecture
# (head.W and head.B: the element-wise head's per-label weights, parameters of the head itself)
LABEL_LAYERS = re.compile(r"(word_proj|head\.fc1|head\.fc2|fc|group_pool\.assign)\.[^.]+|head\.W|head\.B")
# the reference keeps MSRN's added 1x1 convolutions inside its backbone module, so a backbone carries them
BACKBONE_EXTRAS = "depth_conv."


def match_init_state(
    own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str, label_shaped: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state that starts a freshly built model from a checkpoint's weights (`--init`), and the layers
    left as the fresh model has them.

    A layer shaped by the label set (LABEL_LAYERS, or the model's own `label_shaped` pattern) whose shapes
    differ from the checkpoint's stays fresh; the label inputs always stay the fresh model's. A key on one side
    only, or any other shape difference (another architecture), is an error naming the keys.
    """
    keys = [k for k in own if k not in LABEL_INPUTS]
    missing = [k for k in keys if k not in given]
    unexpected = [k for k in given if k not in own and k not in LABEL_INPUTS]
    misfits = [k for k in keys if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    layers = re.compile(label_shaped) if label_shaped is not None else LABEL_LAYERS
    fresh = sorted({k.rsplit(".", 1)[0] for k in misfits if layers.fullmatch(k)})
    architecture = [k for k in misfits if not layers.fullmatch(k)]
    misfit(
        where,
        missing,
        unexpected,
        shape_misfits(own, given, architecture),
        " (--init needs a checkpoint of the same --model; only layers shaped by the label set may differ)",
    )
    state = {k: own[k] if k in LABEL_INPUTS or k.rsplit(".", 1)[0] in fresh else given[k] for k in own}
    return state, fresh


def require_backbone(arch: str | None, model: nn.Module, where: str) -> None:
    """One line when a checkpoint holds another backbone than the model's (e.g. resnet50 for resnet101)."""
    resnet = getattr(model, "backbone", model)
    if arch is not None and arch != resnet.arch:
        raise MSRNError(
            f"{where} holds a {arch} backbone but the model's is {resnet.arch}: choose the --model built on {arch}"
        )


def backbone_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model state's backbone weights and its added 1x1 convolutions' (depth_conv), each without its prefix."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    extras = {k.removeprefix(BACKBONE_EXTRAS): v for k, v in state.items() if k.startswith(BACKBONE_EXTRAS)}
    return backbone, extras
