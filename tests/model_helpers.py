"""Helpers shared by the model tests."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so folding them has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


# the model's module names -> the reference's (which msrn's version-1 checkpoints kept), written out from the
# reference's checkpoint layout; whole keys for the element-wise head's parameters
REFERENCE_NAMES = {
    "depth_conv.0.": "conv_buffer1.",
    "depth_conv.1.": "conv_buffer2.",
    "project.": "ProjectM.",
    "word_proj.": "fc_label.",
    "label_gat.layers.": "label_embed.layers.",
    "group_pool.embed.": "group_embed.layers.0.embed.",
    "group_pool.assign.": "group_embed.layers.0.assign_mat.",
    "head.fc1.": "fc1.",
    "head.fc2.": "fc2.",
    "head.W": "W",
    "head.B": "B",
}


def reference_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state under the reference's module names (the backbone stays `backbone.*`)."""

    def rename(key: str) -> str:
        for new, old in REFERENCE_NAMES.items():
            if key == new or (new.endswith(".") and key.startswith(new)):
                return old + key[len(new) :]
        return key

    return {rename(k): v for k, v in state.items()}
