"""Backbones by name: the reference's ResNets, or any timm model with feature maps at strides 8, 16 and 32.

A backbone name `timm:NAME` (`--model msrn_timm --backbone NAME`) builds `timm.create_model(NAME,
features_only=True)` and reads the three maps whose reductions are 8, 16 and 32 (ConvNeXt,
EfficientNet, RegNet, ResNet variants...; channels-last outputs such as Swin's are turned into
N x C x H x W). timm is imported only for such names, so the ResNet path never needs it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from msrn.errors import MSRNError
from msrn.models.resnet import ResNet

PREFIX = "timm:"
STRIDES = (8, 16, 32)


def _timm():
    """The timm module, or one line saying how to get it."""
    try:
        import timm  # optional: only `timm:` backbones need it (and it needs torchvision)
    except ImportError as e:
        raise MSRNError(f"timm backbones need timm and torchvision (pip install timm torchvision): {e}") from None
    return timm


class TimmBackbone(nn.Module):
    """A timm feature extractor giving the maps at strides 8, 16 and 32, as ResNet.forward_features does."""

    def __init__(self, name: str, pretrained: bool = False, file: str | Path | None = None) -> None:
        super().__init__()
        timm = _timm()
        self.arch = PREFIX + name
        kw = {"pretrained_cfg_overlay": {"file": str(file)}} if file is not None else {}
        try:
            probe = timm.create_model(name, pretrained=False, features_only=True)
        except (RuntimeError, ValueError) as e:  # unknown name, or a model without features_only
            raise MSRNError(f"timm backbone {name!r}: {e}") from None
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise MSRNError(
                f"timm backbone {name!r} gives feature maps at strides {reductions}, not at "
                f"{', '.join(map(str, missing))}; MSRN reads strides 8, 16 and 32"
            )
        indices = tuple(len(reductions) - 1 - reductions[::-1].index(s) for s in STRIDES)  # the deepest of each
        self.body = timm.create_model(
            name, pretrained=pretrained or file is not None, features_only=True, out_indices=indices, **kw
        )
        self.channels = tuple(self.body.feature_info.channels())
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def forward_features(self, x: torch.Tensor, depth: int = 3) -> tuple[torch.Tensor, ...]:
        """B x 3 x H x W -> the maps at strides 8, 16 and 32 (the first `depth` of them, as ResNet's
        forward_features gives), each B x C_s x H_s x W_s."""
        maps = self.body(x)[:depth]
        if self.channels_last:
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        return tuple(m.contiguous() for m in maps)


def build_backbone(arch: str) -> ResNet | TimmBackbone:
    """ResNet(arch) for the reference's names, TimmBackbone for `timm:NAME`."""
    if arch.startswith(PREFIX):
        return TimmBackbone(arch.removeprefix(PREFIX))
    return ResNet(arch)
