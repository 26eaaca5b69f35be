"""The fast paths, applied to a model written plainly.

`use_fast_paths` switches, in place, the plain modules outside the backbone to the faster forms of the same
values (_ops.py, _linear.py): 1x1 convolutions and 2x2 max-pools for CPU inference, the head's linear layers
through oneDNN in inference and with their weight gradient's memory reused in training. The training loop
applies it; so does `optimize_for_inference`, the explicit eval-only path: batch-norm folded into
convolutions, channels-last memory, label semantics computed once, optionally torch.compile. That returns
a new module whose logits equal the original's (eval mode) to float32 rounding (tests/test_fuse.py).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from msrn.models._linear import ReusedGradLinear
from msrn.models._loading import Network
from msrn.models._ops import conv1x1, max_pool2x2, onednn_linear
from msrn.models.msrn import MSRN

M = TypeVar("M", bound=nn.Module)


class FastConv1x1(nn.Conv2d):
    """nn.Conv2d (1x1, stride 1) whose inference on contiguous CPU maps is one matrix product per image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(self, x)


class FastMaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2, 2) whose inference is the maximum of the map's four strided quarters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2x2(x)


class FastLinear(ReusedGradLinear):
    """nn.Linear through oneDNN for large CPU inference batches, reusing its weight gradient's memory in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = onednn_linear(self, x)
        return super().forward(x) if out is None else out


def _fast_form(name: str, module: nn.Module) -> type[nn.Module] | None:
    """The faster class for a plain module outside the backbone, or None to keep it."""
    if type(module) is nn.Conv2d:
        plain = module.kernel_size == module.stride == (1, 1) and module.padding == (0, 0) and module.groups == 1
        return FastConv1x1 if plain else None
    if type(module) is nn.MaxPool2d:
        two = module.kernel_size in (2, (2, 2)) and module.stride in (2, (2, 2)) and module.padding in (0, (0, 0))
        return FastMaxPool2x2 if two and module.dilation in (1, (1, 1)) and not module.ceil_mode else None
    if type(module) is nn.Linear and name.startswith("head."):
        return FastLinear
    return None


def use_fast_paths(model: M) -> M:
    """Switch, in place, the model's plain 1x1 convolutions and 2x2 max-pools outside the backbone, and its
    head's linear layers, to their fast forms (the same parameters and state_dict); returns the model."""
    for name, module in model.named_modules():
        fast = None if name.split(".")[0] == "backbone" else _fast_form(name, module)
        if fast is not None:
            module.__class__ = fast
            if isinstance(module, ReusedGradLinear):
                module._grad_storage = None
    return model


def _pair(t: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's kernel/stride/padding/dilation: always two ints, typed by torch as any length (shared with
    Conv1d/3d)."""
    a, b = t
    return a, b


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing bn(conv(x)) with bn's running statistics (folded in float64)."""
    weight, shift, mean, var = bn.weight, bn.bias, bn.running_mean, bn.running_var
    if weight is None or shift is None or mean is None or var is None:
        raise ValueError("only an affine batch norm with running statistics folds into a convolution")
    scale = weight.double() / torch.sqrt(var.double() + bn.eps)  # out
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        _pair(conv.kernel_size),
        _pair(conv.stride),
        conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        _pair(conv.dilation),
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device)
    fused.weight.copy_(conv.weight.double() * scale[:, None, None, None])
    assert fused.bias is not None  # built with bias=True
    fused.bias.copy_(shift.double() + (bias - mean.double()) * scale)
    return fused


def fold_batchnorms(module: nn.Module) -> int:
    """Fold in place every BatchNorm2d that directly follows a Conv2d; returns how many were folded.

    Pairs are siblings named convI/bnI (ResNet stems and blocks) or consecutive entries of an
    nn.Sequential (downsample branches); the batch norm becomes nn.Identity.
    """
    folded = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs = list(zip(names[:-1], names[1:], strict=True))
        else:
            pairs = [(n, "bn" + n[4:]) for n in children if n.startswith("conv") and "bn" + n[4:] in children]
        for cname, bname in pairs:
            conv, bn = children[cname], children[bname]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats:
                setattr(parent, cname, fold_conv_bn(conv, bn))
                setattr(parent, bname, nn.Identity())
                folded += 1
    return folded


class InferenceModel(nn.Module):
    """Eval-only wrapper: converts the input to the model's memory format and, for MSRN, uses
    label and group semantics computed once (they depend on the weights only)."""

    rows: torch.Tensor  # buffers registered for MSRN only
    assign: torch.Tensor | None

    def __init__(self, model: Network, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if isinstance(model, MSRN):
            with torch.no_grad():
                sem = model.semantics()
                self.register_buffer("rows", sem.rows())  # (C+K) x D
                self.register_buffer("assign", sem.assign)  # C x K: the element-wise head's (None without groups)
        super().train(False)

    def train(self, mode: bool = True) -> InferenceModel:
        """Refuse training mode: folded batch norms no longer update statistics."""
        if mode:
            raise RuntimeError("an optimize_for_inference model is eval-only; train the original model")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x 3 x H x W -> logits B x C."""
        x = x.contiguous(memory_format=self.memory_format)
        if not isinstance(self.model, MSRN):
            return self.model(x)
        return self.model.classify(self.model.projected_maps(x), self.rows, assign=self.assign)

    @property
    def labels(self) -> list[str]:
        return self.model.labels


def optimize_for_inference(
    model: Network, channels_last: bool = True, fold_bn: bool = True, compile: bool = False
) -> InferenceModel:
    """A copy of `model` for eval-only inference: BN folded, channels-last, semantics precomputed.

    `compile=True` also wraps the forward in torch.compile (needs a C++ compiler on CPU; the
    first call compiles for minutes). The original model is left as it was.
    """
    model = use_fast_paths(copy.deepcopy(model).eval())
    if fold_bn:
        fold_batchnorms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format, which Module.to takes
    for p in model.parameters():
        p.requires_grad_(False)
    fast = InferenceModel(model, channels_last)
    if compile:
        fast.compile()  # torch.compile over the module's call (nn.Module's own form of it)
    return fast
