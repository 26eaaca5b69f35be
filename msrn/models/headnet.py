"""What every head compared with MSRN shares (docs/heads.md): a backbone's last feature map X (B x d x h x w)
and a head that turns it into C logits. ML-GCN, CSRA, ML-Decoder, Query2Label, ADD-GCN and the pooling
baselines are subclasses; each file of theirs holds its head's maths and, below it, one `@register_model` function
per backbone (`FAMILY_resnet101`, `_resnet50`, `_resnet18`, `_tiny`, `_timm`), each a `create_head` call.

The rest of msrn sees one protocol, as it sees MSRN's: `forward(x) -> B x C logits`, `labels`,
`param_groups(lr, lr_backbone)` (the backbone slower, as every peer's code does), `backbone` (a ResNet or a
timm model, so `--pretrained` loads into it), `describe()` (what a checkpoint records to rebuild the
network) and, for heads with spatial attention, `attention(X)` and `explained(x, k)` for `--explain`.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from msrn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from msrn.models.timm_backbone import PREFIX, build_backbone

KIND = "head"  # the architecture kind checkpoints record for these networks
# what the backbone was trained to see: "imagenet" (msrn's input as it is) or "unit" (pixels in [0, 1], as CSRA's
# code feeds its ResNet); msrn's images are always ImageNet-normalised, so "unit" undoes that first
PIXELS = ("imagenet", "unit")


class HeadNetwork(nn.Module):
    """A backbone and a head over its last feature map: logits = head(X), X = backbone(x) at stride 32."""

    family: ClassVar[str] = ""  # the head's name: the model names' prefix and the checkpoints' record
    title: ClassVar[str] = ""  # the paper's name for it (pictures, cards)
    explainable: ClassVar[bool] = False  # whether the head attends spatially per label (label_maps)
    # parameters whose shapes follow the label set: `--init` starts them afresh when it changes
    label_shaped: ClassVar[str] = r"$^"

    def __init__(self, backbone: str, num_classes: int, labels: list[str] | None, settings: dict[str, Any]):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a model needs at least one label, not {num_classes}")
        self.backbone = build_backbone(backbone)  # a ResNet, or a timm model for "timm:NAME"
        self.num_classes = num_classes
        self.label_names = list(labels or [])
        self.settings = dict(settings)  # the head's hyper-parameters, as describe() records them
        self.model_name = ""  # the registered name it was built under (set by the registry; checkpoints record it)

    @property
    def width(self) -> int:
        """d, the channels of the last feature map."""
        return int(self.backbone.channels[-1])

    @property
    def pixels(self) -> str:
        """The pixel range the backbone sees (PIXELS)."""
        return str(self.settings.get("pixels", "imagenet"))

    def set_pixels(self, pixels: str) -> None:
        """Feed the backbone pixels in this range (PIXELS): "unit" for weights trained on [0, 1] images."""
        if pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, not {pixels!r}")
        if pixels == "imagenet":
            self.settings.pop("pixels", None)
        else:
            self.settings["pixels"] = pixels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W (ImageNet-normalised) -> X: B x d x H/32 x W/32, the backbone's last map."""
        if self.pixels == "unit":  # back to [0, 1]
            std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None]
            x = x * std + torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
        return self.backbone.forward_features(x)[-1]

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """X: B x d x h x w -> logits B x C."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W -> logits B x C."""
        return self.head(self.features(x))

    def label_representations(self) -> torch.Tensor:
        """C x D: the one vector per label the head learns (what `msrn compare` measures the mean cosine of)."""
        raise NotImplementedError

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """X: B x d x h x w -> each label's attention over the positions, B x C x h x w (explainable heads)."""
        raise NotImplementedError(f"{self.family} has no spatial attention to show")

    def explained(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B x C), each image's k best label ids (B x k) and their attention maps (B x k x h x w, each
        summing to 1), from one backbone pass."""
        fmap = self.features(x)
        logits = self.head(fmap)
        idx = logits.topk(min(k, logits.shape[1]), dim=1).indices
        return logits, idx, self.label_maps_of(fmap, idx)

    def label_maps_of(self, fmap: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The attention maps of the labels idx (B x k), each normalised to sum to 1: B x k x h x w."""
        att = self.attention(fmap).float()  # B x C x h x w
        m = att.gather(1, idx[:, :, None, None].expand(-1, -1, *att.shape[2:]))
        return m / m.flatten(2).sum(-1)[..., None, None].clamp_min(torch.finfo(m.dtype).tiny)

    def param_groups(self, lr: float, lr_backbone: float) -> list[dict]:
        """The backbone at lr_backbone, the head at lr (as ML-GCN, CSRA and ADD-GCN's get_config_optim)."""
        slow = list(self.backbone.parameters())
        ids = {id(p) for p in slow}
        fast = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": slow, "lr": lr_backbone, "name": "backbone"}, {"params": fast, "lr": lr, "name": "head"}]

    @property
    def labels(self) -> list[str]:
        """The output names (their indices as text when the model was built without names)."""
        return self.label_names or [str(i) for i in range(self.num_classes)]

    def default_name(self) -> str:
        """The registered name of this head on this backbone (for a network built without the registry)."""
        arch = self.backbone.arch
        size = "timm" if arch.startswith(PREFIX) else "tiny" if arch == "resnet_tiny" else arch
        return f"{self.family}_{size}"

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this network (with its state_dict)."""
        return {
            "kind": KIND,
            "name": self.model_name or self.default_name(),
            "head": self.family,
            "backbone": self.backbone.arch,
            "num_classes": self.num_classes,
            "settings": dict(self.settings),
            "labels": list(self.label_names),
        }


H = TypeVar("H", bound=HeadNetwork)


def create_head(
    cls: type[H],
    arch: str | None,
    num_classes: int,
    labels: list[str] | None = None,
    backbone: str | None = None,
    pixels: str = "imagenet",
    **settings: Any,
) -> H:
    """The head `cls` on the backbone `arch` (None: the timm model `backbone` names, `NAME` or `timm:NAME`), with
    its `settings`; ValueError (one line through the registry) for a setting it lacks or that does not fit."""
    if arch is None:
        if not backbone or backbone == PREFIX:
            raise ValueError("needs a timm model name: --backbone NAME (e.g. convnext_tiny)")
        arch = backbone if backbone.startswith(PREFIX) else PREFIX + backbone
    elif backbone is not None and backbone != arch:
        raise ValueError(f"is built on {arch}; --backbone goes with the _timm models")
    try:
        model = cls(arch, num_classes, labels, **settings)
    except TypeError as e:  # a setting the head does not have
        raise ValueError(str(e)) from None
    model.set_pixels(pixels)
    return model


def spatial(fmap: torch.Tensor) -> torch.Tensor:
    """X: B x d x h x w -> B x hw x d, the positions as a sequence."""
    return fmap.flatten(2).transpose(1, 2)
