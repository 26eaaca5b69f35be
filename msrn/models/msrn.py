"""MSRN (docs/design.md §1-6): a backbone read at three depths, the label graph, group pooling, label-guided
attention at every depth, and the head (the paper's MLP or the reference's element-wise one, heads.py).

Modules are named for what they are in the paper; the reference's checkpoint names (`conv_buffer1/2`,
`ProjectM`, `fc_label`, `label_embed`, `group_embed`, top-level `fc1`/`fc2`/`W`/`B`) are mapped when a file is
loaded (_reference_layout.py). The CPU fast paths are applied by the callers that want them (_fuse.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msrn.models._registry import head_class, register_model
from msrn.models.attention import attend
from msrn.models.gat import GATStack, GroupPooling, group_loss, group_loss_weight
from msrn.models.timm_backbone import PREFIX, build_backbone

DEPTHS = (1, 2, 3)  # after layer2, layer3, layer4
# the mlp head's fc1 sees (C + K) x 3 x D inputs; above this many weights (4 GiB in fp32) building is refused
MAX_FC1_WEIGHTS = 2**30


class Semantics(NamedTuple):
    """The label side of MSRN, which depends on the weights alone: local label semantics L (C x D), global
    group semantics G (K x D; 0 x D without them), the labels' assignment to the groups, and the group loss
    that keeps groups apart."""

    local: torch.Tensor
    groups: torch.Tensor
    assign: torch.Tensor | None  # C x K, each label's soft assignment to the groups (None without them)
    group_loss: torch.Tensor

    def rows(self) -> torch.Tensor:
        """The attention's semantic rows: labels then groups, (C+K) x D."""
        return torch.cat([self.local, self.groups], 0)


# fields of older checkpoints' configs that are no longer architecture: the labels now travel beside the
# config, and the attention form is chosen when the model runs
LEGACY_FIELDS = ("labels", "attention")


@dataclass
class MSRNConfig:
    """The architecture, everything needed to rebuild the network (stored in every checkpoint beside the
    label names)."""

    backbone: str = "resnet101"
    num_classes: int = 80
    num_groups: int = 4
    word_dim: int = 300
    label_dims: tuple[int, int] = (256, 300)  # fc_label output, first GAT output
    semantic_dim: int = 512  # D
    hidden_dim: int = 2048  # fc1 output
    group_loss_weight: float = 1e-4  # the reference's; models built by the registry weight it by label count (gat.py)
    # ablation switches (the paper's model: all on); checkpoints written before them load as the full model
    depths: tuple[int, ...] = DEPTHS  # which of the three depths are read
    group_semantics: bool = True  # off: no group pooling, no group rows in the attention, no group loss
    label_graph: bool = True  # off: the same GAT layers see an identity adjacency (each label on its own)
    head: str = "mlp"  # the classifier: "mlp" (the paper's) or "elementwise" (weights linear in the labels)

    def __post_init__(self) -> None:
        self.label_dims = cast(tuple[int, int], tuple(self.label_dims))  # JSON and checkpoints hold lists
        self.depths = tuple(self.depths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_dims"] = list(self.label_dims)
        d["depths"] = list(self.depths)
        return d

    def check(self) -> None:
        """ValueError naming what is wrong, before any weight is allocated: depths, head, fc1's size."""
        self.depths = check_depths(self.depths)
        head_class(self.head)
        rows = self.num_classes + (self.num_groups if self.group_semantics else 0)
        fc1 = rows * len(self.depths) * self.semantic_dim * self.hidden_dim
        if self.head == "mlp" and fc1 > MAX_FC1_WEIGHTS:  # 5000 labels would ask for tens of GB
            raise ValueError(
                f"{self.num_classes} labels and {self.num_groups} groups need {fc1 / 1e9:.1f} billion weights in "
                f"fc1 (limit {MAX_FC1_WEIGHTS / 1e9:.1f}); use --head elementwise (weights linear in the labels), "
                "fewer labels, a smaller --pool-ratio or msrn_tiny"
            )

    @classmethod
    def from_dict(cls, d: dict) -> MSRNConfig:
        """The config a checkpoint stored; the LEGACY_FIELDS of older checkpoints are left out."""
        d = {k: v for k, v in d.items() if k not in LEGACY_FIELDS}
        d["label_dims"] = tuple(d.get("label_dims", (256, 300)))
        d["depths"] = tuple(d.get("depths", DEPTHS))
        return cls(**d)


def check_depths(depths: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The depths as an increasing tuple, or ValueError unless they are a non-empty subset of 1, 2, 3."""
    out = tuple(sorted(set(int(s) for s in depths)))
    if not out or not set(out) <= set(DEPTHS) or len(out) != len(depths):
        raise ValueError(f"depths must be distinct values among 1, 2, 3, got {list(depths)}")
    return out


class MSRN(nn.Module):
    """The network of docs/design.md §1-6: an image's maps at three depths attended by label and group semantics
    computed from the label graph, then the head."""

    model_name = ""  # the registered name it was built under (set by the registry; checkpoints record it)
    word_vectors: torch.Tensor  # buffers (register_buffer), typed here
    adjacency: torch.Tensor

    def __init__(
        self, cfg: MSRNConfig, word_vectors: torch.Tensor, adjacency: torch.Tensor, labels: list[str] | None = None
    ):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.label_names = list(labels or [])
        c, d = cfg.num_classes, cfg.semantic_dim
        k = cfg.num_groups if cfg.group_semantics else 0  # group rows the attention and the head see
        # §1: the image side. Layers of depths not read are Identity (no weights), so nothing sits unused.
        self.backbone = build_backbone(cfg.backbone)  # a ResNet, or a timm model for "timm:NAME"
        widths = self.backbone.channels  # after layer2, layer3, layer4
        self.depth_conv = nn.ModuleList(  # the 1x1 convolutions added after layer2 and layer3
            nn.Conv2d(ch, ch, 1) if s in cfg.depths and s < 3 else nn.Identity() for s, ch in zip(DEPTHS, widths)
        )
        for conv in self.depth_conv:  # drawn as the reference's ResNet init loop draws them
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / conv.out_channels))  # 1x1 kernel
        self.pool = nn.MaxPool2d(2, 2)
        self.project = nn.ModuleList(  # each depth to D channels
            nn.Conv2d(ch, d, 1) if s in cfg.depths else nn.Identity() for s, ch in zip(DEPTHS, widths)
        )
        # §2-4: the label side
        self.word_proj = nn.Linear(cfg.word_dim, cfg.label_dims[0])
        self.label_gat = GATStack((*cfg.label_dims, d))  # local label semantics L
        self.group_pool = GroupPooling(d, cfg.num_groups) if cfg.group_semantics else None  # group semantics G
        # §6: the head over the attended semantics
        self.head = head_class(cfg.head)(
            num_classes=c, rows=c + k, width=len(cfg.depths) * d, hidden=cfg.hidden_dim, groups=cfg.group_semantics
        )
        # label inputs travel with the weights, so a checkpoint can never meet the wrong vectors
        self.register_buffer("word_vectors", torch.as_tensor(word_vectors, dtype=torch.float32).clone())
        self.register_buffer("adjacency", torch.as_tensor(adjacency, dtype=torch.float32).clone())
        if self.word_vectors.shape != (c, cfg.word_dim) or self.adjacency.shape != (c, c):
            raise ValueError(
                f"word vectors {tuple(self.word_vectors.shape)} / adjacency {tuple(self.adjacency.shape)} "
                f"do not fit {c} labels of width {cfg.word_dim}"
            )

    def semantics(self) -> Semantics:
        """Local label semantics L, group semantics G, the labels' group assignment and the group loss (§3-4)."""
        if self.cfg.label_graph:
            mask = self.adjacency > 0
        else:
            mask = torch.eye(self.cfg.num_classes, dtype=torch.bool, device=self.adjacency.device)
        local = self.label_gat(self.word_proj(self.word_vectors), mask)  # C x D
        if self.group_pool is None:
            return Semantics(local, local.new_zeros(0, local.shape[1]), None, local.new_zeros(()))
        groups, assign = self.group_pool(F.relu(local), mask)  # K x D, C x K
        return Semantics(local, groups, assign, group_loss(local, groups, assign, self.cfg.group_loss_weight))

    def pooled_maps(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """layer2/3/4 outputs -> the added 1x1 convolution (depths 1, 2) and the 2x2 max-pool, for the depths read:
        each B x C_s x H_s x W_s."""
        return [self.pool(self.depth_conv[s - 1](feats[s - 1])) for s in self.cfg.depths]

    def projected_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W -> F_s, the pooled maps projected to D channels, each B x D x H_s x W_s: what the
        attention reads (and the explanations' grid)."""
        pooled = self.pooled_maps(self.backbone.forward_features(x, max(self.cfg.depths)))
        return [self.project[s - 1](m) for s, m in zip(self.cfg.depths, pooled)]

    def classify(
        self,
        maps: list[torch.Tensor],
        rows: torch.Tensor,
        attention: str | None = None,
        assign: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected maps (each B x D x H_s x W_s) and semantic rows ((C+K) x D, labels then groups) -> B x C
        logits: label-guided attention at each depth (§5; in the form named, None: chosen by device),
        concatenated, then the head (§6; the element-wise head reads the assignment C x K, computed when not
        given). The one path from features to logits: forward, explanations, the folded model and export use it.
        """
        attended = torch.cat([attend(m.flatten(2), rows, attention) for m in maps], -1)  # B x (C+K) x SD
        if self.cfg.head == "elementwise" and assign is None and self.group_pool is not None:
            assign = self.semantics().assign
        return self.head(attended, assign)

    def forward(
        self, x: torch.Tensor, semantics: Semantics | None = None, attention: str | None = None
    ) -> torch.Tensor:
        """x: B x 3 x H x W -> logits B x C, in every mode. Training passes the `semantics` it also takes the
        group loss from, so they are computed once; `attention` names the form (None: chosen by device)."""
        sem = self.semantics() if semantics is None else semantics
        return self.classify(self.projected_maps(x), sem.rows(), attention, sem.assign)

    def label_representations(self) -> torch.Tensor:
        """C x D: the one vector per label the head learns (the local label semantics that guide the
        attention); how alike they end up is what `msrn compare` reports."""
        return self.semantics().local

    def param_groups(self, lr: float, lr_backbone: float) -> list[dict]:
        """The reference's two groups: the backbone and its added 1x1 convolutions at lr_backbone, the rest at lr."""
        slow = [p for n, p in self.named_parameters() if n.startswith(("backbone.", "depth_conv."))]
        ids = {id(p) for p in slow}
        fast = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": slow, "lr": lr_backbone, "name": "backbone"}, {"params": fast, "lr": lr, "name": "head"}]

    @property
    def labels(self) -> list[str]:
        """The output names (their indices as text when the model was built without names)."""
        return self.label_names or [str(i) for i in range(self.cfg.num_classes)]


def _create_msrn(
    num_classes: int,
    labels: list[str] | None = None,
    word_vectors: Any = None,
    adjacency: Any = None,
    pool_ratio: float = 0.2,
    num_groups: int | None = None,
    defaults: dict[str, Any] | None = None,
    **settings: Any,
) -> MSRN:
    """An MSRN for `num_classes` labels: label vectors (C x dim; fixed random ones without them), the adjacency
    A_hat (C x C, used as given; no edges without it), K = num_groups or int(pool_ratio x C) groups, and
    MSRNConfig fields (`settings` over the entrypoint's `defaults`)."""
    vecs = placeholder_vectors(num_classes) if word_vectors is None else np.asarray(word_vectors, dtype=np.float32)
    adj = np.eye(num_classes, dtype=np.float32) if adjacency is None else np.asarray(adjacency, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != num_classes or adj.shape != (num_classes, num_classes):
        raise ValueError(f"label vectors {vecs.shape} and adjacency {adj.shape} do not fit {num_classes} labels")
    known = {f.name for f in fields(MSRNConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"no setting {', '.join(unknown)} (settings: {', '.join(sorted(known))})")
    groups = num_groups or max(1, int(pool_ratio * num_classes))
    # a fresh model's group loss is weighted for its label count (a reference checkpoint passes the reference's)
    weight = group_loss_weight(num_classes, groups)
    given = {"group_loss_weight": weight, **(defaults or {}), **settings, "num_classes": num_classes}
    given.update(num_groups=groups, word_dim=vecs.shape[1])
    cfg = MSRNConfig(**given)
    cfg.check()
    return MSRN(cfg, torch.from_numpy(vecs), torch.from_numpy(adj), labels)


def placeholder_vectors(num_classes: int, dim: int = 300, seed: int = 0) -> np.ndarray:
    """Fixed random label vectors for models built without real ones (tests, quick experiments)."""
    return np.random.default_rng(seed).standard_normal((num_classes, dim)).astype(np.float32)


@register_model(label_graph=True)
def msrn_resnet101(**kwargs: Any) -> MSRN:
    """The paper's model: MSRN on ResNet-101."""
    return _create_msrn(**kwargs, defaults=dict(backbone="resnet101"))


@register_model(label_graph=True)
def msrn_resnet50(**kwargs: Any) -> MSRN:
    """MSRN on ResNet-50."""
    return _create_msrn(**kwargs, defaults=dict(backbone="resnet50"))


@register_model(label_graph=True)
def msrn_resnet18(**kwargs: Any) -> MSRN:
    """MSRN on ResNet-18 with narrower label semantics (D = 256) and fc1 (1024)."""
    return _create_msrn(**kwargs, defaults=dict(backbone="resnet18", semantic_dim=256, hidden_dim=1024))


@register_model(label_graph=True)
def msrn_tiny(**kwargs: Any) -> MSRN:
    """MSRN on a tiny ResNet with narrow label layers: CPU tests, demos and the scenes benchmark."""
    tiny = dict(backbone="resnet_tiny", label_dims=(64, 64), semantic_dim=64, hidden_dim=256)
    return _create_msrn(**kwargs, defaults=tiny)


@register_model(label_graph=True)
def msrn_timm(backbone: str | None = None, **kwargs: Any) -> MSRN:
    """The paper's head on a timm backbone: `backbone=NAME` (or `timm:NAME`), e.g. convnext_tiny."""
    if not backbone or backbone == PREFIX:
        raise ValueError("needs a timm model name: --backbone NAME (e.g. convnext_tiny)")
    return _create_msrn(**kwargs, backbone=backbone if backbone.startswith(PREFIX) else PREFIX + backbone)
