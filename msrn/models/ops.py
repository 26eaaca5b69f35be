"""The two small operations MSRN applies after its backbone (spec section 1), in forms that give
the same values faster in inference on CPU:

- a 1x1 convolution of a contiguous NCHW map is one matrix product per image (W @ x over
  the H*W positions); PyTorch's NCHW 1x1 convolution on CPU is about 1.5x slower at these sizes;
- a 2x2, stride-2 max-pool is the elementwise maximum of the map's four strided quarters, 6x
  faster than max_pool2d on NCHW CPU tensors.

Both run only without autograd. Training keeps nn.Conv2d and max_pool2d, so its gradients stay
the reference's: max_pool2d sends a tie's gradient to one element, torch.maximum would share it.
benchmarks/bench_breakdown.py times both against the plain modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _autograd(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether this call records a graph (training or any input needing gradients)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a 1x1, stride-1 convolution: B x C x H x W -> B x O x H x W."""
    plain = conv.kernel_size == conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
    if not plain or not x.is_contiguous() or _autograd(x, *conv.parameters()):
        return conv(x)  # other shapes, training, and channels-last input (where the convolution is fast)
    b, c, h, w = x.shape
    weight = conv.weight.view(1, conv.out_channels, c).expand(b, -1, -1)  # B x O x C, no copy
    if conv.bias is None:
        y = torch.bmm(weight, x.view(b, c, h * w))  # B x O x HW
    else:
        y = torch.baddbmm(conv.bias.view(1, -1, 1), weight, x.view(b, c, h * w))
    return y.view(b, conv.out_channels, h, w)


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2): B x C x H x W -> B x C x H//2 x W//2 (odd last rows/columns dropped)."""
    if _autograd(x):
        return F.max_pool2d(x, 2, 2)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    top, bottom = x[..., 0:h:2, :w], x[..., 1:h:2, :w]  # even and odd rows
    return torch.maximum(
        torch.maximum(top[..., 0::2], top[..., 1::2]), torch.maximum(bottom[..., 0::2], bottom[..., 1::2])
    )
