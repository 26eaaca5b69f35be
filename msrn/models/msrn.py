"""The MSRN module (docs/design.md §1-6): backbone at three depths, label graph, group pooling,
label-guided attention at every depth, and the classifier (the paper's MLP or the reference's element-wise
head, msrn.models.heads).

Parameter names follow the reference checkpoints (`ProjectM`, `fc_label`, `label_embed`,
`group_embed`, `fc1`, `fc2`, `W`, `B`); the backbone is `backbone.*` here and `resnet_101.*` there,
and the reference's `resnet_101.conv_buffer{1,2}` are `conv_buffer{1,2}` (see reference_layout.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import nn

from msrn.models.attention import attend
from msrn.models.gat import GATStack, GroupStack, group_loss
from msrn.models.heads import build_head
from msrn.models.ops import conv1x1, max_pool2x2
from msrn.models.resnet import ResNet
from msrn.models.timm_backbone import build_backbone

DEPTHS = (1, 2, 3)  # after layer2, layer3, layer4


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_dims"] = list(self.label_dims)
        d["depths"] = list(self.depths)
        return d

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
    # buffers and the head set in __init__ outside nn.Module's attribute typing (register_buffer, __dict__)
    word_vectors: torch.Tensor
    adjacency: torch.Tensor
    classifier: nn.Module

    def __init__(
        self, cfg: MSRNConfig, word_vectors: torch.Tensor, adjacency: torch.Tensor, labels: list[str] | None = None
    ):
        super().__init__()
        self.cfg = cfg
        self.label_names = list(labels or [])
        cfg.depths = check_depths(cfg.depths)
        c, d = cfg.num_classes, cfg.semantic_dim
        k = cfg.num_groups if cfg.group_semantics else 0  # group rows the attention and classifier see
        self.backbone = build_backbone(cfg.backbone)  # a ResNet, or a timm model for "timm:NAME"
        c2, c3, c4 = self.backbone.channels
        # layers of depths not read are not built (None / Identity: no weights), so nothing sits unused
        self.conv_buffer1 = nn.Conv2d(c2, c2, 1) if 1 in cfg.depths else None
        self.conv_buffer2 = nn.Conv2d(c3, c3, 1) if 2 in cfg.depths else None
        for conv in (self.conv_buffer1, self.conv_buffer2):  # drawn as the reference's ResNet init loop draws them
            if conv is not None:
                kh, kw = conv.kernel_size
                nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kh * kw * conv.out_channels)))
        self.ProjectM = nn.ModuleList(
            nn.Conv2d(ch, d, 1) if s in cfg.depths else nn.Identity() for s, ch in zip(DEPTHS, (c2, c3, c4))
        )
        self.fc_label = nn.Linear(cfg.word_dim, cfg.label_dims[0])
        self.label_embed = GATStack((*cfg.label_dims, d))
        self.group_embed = GroupStack(d, cfg.num_groups) if cfg.group_semantics else None
        head = build_head(cfg.head, c, c + k, len(cfg.depths) * d, cfg.hidden_dim, cfg.group_semantics)
        for name, part in [*head.named_children(), *head.named_parameters(recurse=False)]:
            setattr(self, name, part)  # under the reference checkpoints' top-level names: fc1, fc2 or W, B
        self.__dict__["classifier"] = head  # the same parameters, so not registered a second time
        # label inputs travel with the weights, so a checkpoint can never meet the wrong vectors
        self.register_buffer("word_vectors", torch.as_tensor(word_vectors, dtype=torch.float32).clone())
        self.register_buffer("adjacency", torch.as_tensor(adjacency, dtype=torch.float32).clone())
        if self.word_vectors.shape != (c, cfg.word_dim) or self.adjacency.shape != (c, c):
            raise ValueError(
                f"word vectors {tuple(self.word_vectors.shape)} / adjacency {tuple(self.adjacency.shape)} "
                f"do not fit {c} labels of width {cfg.word_dim}"
            )

    def semantics(self) -> Semantics:
        """Local label semantics L, group semantics G, the labels' group assignment and the group loss."""
        if self.cfg.label_graph:
            mask = self.adjacency > 0
        else:
            mask = torch.eye(self.cfg.num_classes, dtype=torch.bool, device=self.adjacency.device)
        local = self.label_embed(self.fc_label(self.word_vectors), mask)  # C x D
        if self.group_embed is None:
            return Semantics(local, local.new_zeros(0, local.shape[1]), None, local.new_zeros(()))
        groups, assign = self.group_embed(F.relu(local), mask)  # K x D, C x K
        return Semantics(local, groups, assign, group_loss(local, groups, assign, self.cfg.group_loss_weight))

    def pooled_maps(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """layer2/3/4 outputs -> conv_buffer1/2 (depths 1, 2) and the 2x2 max-pool, each B x C_s x H_s x W_s,
        for the depths read."""
        convs = (self.conv_buffer1, self.conv_buffer2, None)
        return [
            max_pool2x2(f if conv is None else conv1x1(conv, f))
            for s, f, conv in zip(DEPTHS, feats, convs) if s in self.cfg.depths
        ]  # fmt: skip

    def projected_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x 3 x H x W -> the pooled maps of the depths read, projected by ProjectM to D channels,
        each B x D x H_s x W_s: what the attention reads (and the explanations' grid)."""
        pooled = self.pooled_maps(self.backbone.forward_features(x, max(self.cfg.depths)))
        # the depths read hold a Conv2d in ProjectM (the others an Identity, never read)
        return [conv1x1(cast(nn.Conv2d, self.ProjectM[s - 1]), m) for s, m in zip(self.cfg.depths, pooled)]

    def head(self, attended: torch.Tensor, assign: torch.Tensor | None = None) -> torch.Tensor:
        """(B x (C+K) x SD) attended semantics, S depths read -> B x C logits. The element-wise head also
        reads the label-to-group assignment (C x K), computed here when not given."""
        if self.cfg.head == "elementwise" and assign is None and self.group_embed is not None:
            assign = self.semantics().assign
        return self.classifier(attended, assign)

    def classify(
        self,
        maps: list[torch.Tensor],
        rows: torch.Tensor,
        attention: str | None = None,
        assign: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected maps (each B x D x H_s x W_s) and semantic rows ((C+K) x D, labels then groups) -> B x C
        logits: attention at each depth (in the form named; None: chosen by device), concatenated, then the head
        (given the assignment C x K, or computing it when the head needs it).

        The one path from features to logits: forward, explanations, the folded model and export use it.
        """
        attended = [attend(m.flatten(2), rows, attention) for m in maps]  # each B x (C+K) x D
        return self.head(torch.cat(attended, -1), assign)  # B x (C+K) x SD

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
        """The reference's two groups: backbone and its conv_buffers at lr_backbone, the head at lr."""
        slow = [p for n, p in self.named_parameters() if n.startswith(("backbone.", "conv_buffer"))]
        ids = {id(p) for p in slow}
        fast = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": slow, "lr": lr_backbone, "name": "backbone"}, {"params": fast, "lr": lr, "name": "head"}]

    @property
    def labels(self) -> list[str]:
        """The output names (their indices as text when the model was built without names)."""
        return self.label_names or [str(i) for i in range(self.cfg.num_classes)]


class PlainClassifier(nn.Module):
    """The backbone alone with global average pooling and a linear layer: the demo's baseline.

    With `hidden` > 0 the head is an MLP instead (Linear, LeakyReLU 0.01 as in MSRN's classifier,
    Linear), a baseline with about MSRN's head capacity but none of its structure.
    """

    def __init__(self, backbone: str, num_classes: int, labels: list[str] | None = None, hidden: int = 0):
        super().__init__()
        self.backbone = ResNet(backbone)
        width = self.backbone.channels[-1]
        self.fc_hidden = nn.Linear(width, hidden) if hidden else None
        self.fc = nn.Linear(hidden or width, num_classes)
        self.label_names = list(labels or [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W -> logits B x C."""
        h = self.backbone(x)
        if self.fc_hidden is not None:
            h = F.leaky_relu(self.fc_hidden(h), 0.01)
        return self.fc(h)

    @property
    def hidden(self) -> int:
        """Width of the MLP head's hidden layer (0: a linear head)."""
        return 0 if self.fc_hidden is None else self.fc_hidden.out_features

    @property
    def labels(self) -> list[str]:
        return self.label_names or [str(i) for i in range(self.fc.out_features)]

    def label_representations(self) -> torch.Tensor:
        """C x D: the rows of the last linear layer, one classifier per label (as ML-GCN's are)."""
        return self.fc.weight

    def param_groups(self, lr: float, lr_backbone: float) -> list[dict]:
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": list(self.backbone.parameters()), "lr": lr_backbone, "name": "backbone"},
            {"params": head, "lr": lr, "name": "head"},
        ]


# the networks msrn builds and loads (what load_checkpoint, Predictor and the exports take)
Classifier: TypeAlias = "MSRN | PlainClassifier"
