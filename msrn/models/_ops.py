"""Operations MSRN applies after its backbone (docs/design.md §1 and §6), in forms that give the
same values faster in inference on CPU:

- a 1x1 convolution of a contiguous NCHW map is one matrix product per image (W @ x over
  the H*W positions), which beats PyTorch's NCHW 1x1 convolution on CPU at these sizes;
- a 2x2, stride-2 max-pool is the elementwise maximum of the map's four strided quarters,
  which beats max_pool2d on NCHW CPU tensors;
- the classifier's 264M-weight fc1 at batch 4 and above runs through oneDNN's inner product,
  reading the dense weight in place: MKL's float32 GEMM, which F.linear calls, streams that
  weight once per two rows of the batch, oneDNN once per batch, with no copy of the weight.
  At batch 1-3 MKL is the faster of the two and keeps the call.

All three run only without autograd. Training keeps nn.Conv2d, max_pool2d and nn.Linear, so its
gradients stay the reference's: max_pool2d sends a tie's gradient to one element, torch.maximum
would share it. benchmarks/bench_breakdown.py times all three against the plain modules; the
figures are in BENCHMARKS.md. The model is written with the plain modules; `use_fast_paths` (_fuse.py)
switches them to these forms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def checked_onednn_linear(fn: Callable | None) -> Callable | None:
    """fn (torch._C._nn.mkldnn_linear, a private API that torch.utils.mkldnn.MkldnnLinear calls) when this
    build has oneDNN and fn gives F.linear's result on a small case, else None: `linear` then takes the
    public nn.Linear path."""
    if fn is None or not torch.backends.mkldnn.is_available():
        return None
    x, w, b = torch.arange(6.0).reshape(2, 3), torch.arange(12.0).reshape(4, 3), torch.arange(4.0)
    try:
        ok = torch.equal(fn(x.to_mkldnn(), w, b).to_dense(), F.linear(x, w, b))
    except (AttributeError, RuntimeError, TypeError):
        return None
    return fn if ok else None


_onednn_linear = checked_onednn_linear(getattr(torch._C._nn, "mkldnn_linear", None))
_ONEDNN_BUILT = _onednn_linear is not None  # fixed for the process
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 lacks it


def autocast_on(device_type: str) -> bool:
    """Whether autocast is active for this device type, on every supported torch."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has one flag per device family
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _autograd(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether this call records a graph (training or any input needing gradients)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a 1x1, stride-1 convolution: B x C x H x W -> B x O x H x W."""
    plain = conv.kernel_size == conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
    if not plain or not x.is_contiguous() or _autograd(x, *conv.parameters()):
        return nn.Conv2d.forward(conv, x)  # other shapes, training, and channels-last input (fast as it is)
    b, c, h, w = x.shape
    weight = conv.weight.view(1, conv.out_channels, c).expand(b, -1, -1)  # B x O x C, no copy
    if conv.bias is None:
        y = torch.bmm(weight, x.view(b, c, h * w))  # B x O x HW
    else:
        y = torch.baddbmm(conv.bias.view(1, -1, 1), weight, x.view(b, c, h * w))
    return y.view(b, conv.out_channels, h, w)


# Smallest batch at which oneDNN beats MKL for fc1 (measured per batch size; the figures are in BENCHMARKS.md)
ONEDNN_MIN_BATCH = 4


def _onednn_linear_ok(layer: nn.Linear, x: torch.Tensor) -> bool:
    """Whether linear() may hand this call to oneDNN: eager float32 CPU inference on a big enough batch."""
    w = layer.weight
    return (
        not (torch.jit.is_tracing() or _is_compiling())  # ONNX export traces too; checked before any shape read
        and x.dim() == 2
        and x.shape[0] >= ONEDNN_MIN_BATCH
        and x.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and w.is_contiguous()
        and (layer.bias is None or layer.bias.dtype == torch.float32)
        and _ONEDNN_BUILT
        and bool(torch.backends.mkldnn.enabled)
        and not autocast_on("cpu")
        and not _autograd(x, *layer.parameters())
    )


def onednn_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """layer(x) through oneDNN for large float32 CPU batches without autograd (B x in -> B x out), else None."""
    if _onednn_linear is None or not _onednn_linear_ok(layer, x):
        return None
    # mkldnn_linear takes the dense weight and bias as views (no copy); only the B x in input is converted
    return _onednn_linear(x.contiguous().to_mkldnn(), layer.weight, layer.bias).to_dense()


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for B x in -> B x out; large float32 CPU batches without autograd go through oneDNN."""
    out = onednn_linear(layer, x)
    return layer(x) if out is None else out


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2): B x C x H x W -> B x C x H//2 x W//2 (odd last rows/columns dropped)."""
    if _autograd(x):
        return F.max_pool2d(x, 2, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    top, bottom = x[..., 0:h:2, :w], x[..., 1:h:2, :w]  # even and odd rows
    return torch.maximum(
        torch.maximum(top[..., 0::2], top[..., 1::2]), torch.maximum(bottom[..., 0::2], bottom[..., 1::2])
    )
