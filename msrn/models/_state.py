"""Model states against models: strict loading with one line naming what does not fit, the state that starts
a run from another checkpoint's weights (`--init`), and a state's backbone part (`--pretrained`)."""

from __future__ import annotations

import re

import torch
from torch import nn

from msrn.errors import MSRNError

# buffers a run builds from its own label set: --init never takes them from the checkpoint
LABEL_INPUTS = ("word_vectors", "adjacency")
# layers whose shapes follow the label set (C labels, K groups, word-vector width); every other shape is architecture
# (W and B: the element-wise head's per-label weights, top-level parameters)
LABEL_LAYERS = re.compile(r"(fc_label|fc1|fc2|fc|group_embed\.layers\.\d+\.assign_mat)\.[^.]+|W|B")
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
    _misfit(
        where,
        missing,
        unexpected,
        _shape_misfits(own, given, architecture),
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
    """A model state's backbone weights (without the `backbone.` prefix) and its conv_buffer1/2 weights."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    extras = {k: v for k, v in state.items() if k.split(".", 1)[0] in BACKBONE_EXTRAS}
    return backbone, extras
