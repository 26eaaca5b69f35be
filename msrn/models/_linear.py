"""A Linear layer for MSRN's 264M-weight fc1 whose weight gradient reuses its memory between steps.

With `zero_grad(set_to_none=True)` (the default) every backward allocates a fresh gradient
for fc1, as large as its weight. On CPU that memory comes straight from the kernel: page faults
and a zero-fill per step, then an unmap at the next zero_grad, so the weight-gradient product
into fresh memory is several times slower than into memory already mapped (BENCHMARKS.md has
the figures). This layer keeps the gradient's storage after the optimizer lets go of it and
writes the next gradient into it.

The numbers are nn.Linear's: the same three products (x W^T + b, g W, g^T x). The storage is
reused only when nothing else refers to it (the previous `.grad` was dropped and no view of it
survives); otherwise backward allocates as nn.Linear does, and accumulation works as usual.
Switching to eval mode releases the kept storage.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from msrn.models._ops import autocast_on


def checked_use_count(fn: Callable[[int], int] | None) -> Callable[[int], int] | None:
    """fn (torch._C._storage_Use_Count, a private API) when it answers as it should, else None: a fresh
    storage held once counts 1, and 2 once a tensor shares it. Without it no gradient memory is reused."""
    if fn is None:
        return None
    try:
        storage = torch.empty(4).untyped_storage()
        alone = fn(storage._cdata)
        shared = torch.empty(0).set_(storage)
        ok = alone == 1 and fn(storage._cdata) == 2
        del shared
    except (AttributeError, RuntimeError, TypeError):
        return None
    return fn if ok else None


_use_count = checked_use_count(getattr(torch._C, "_storage_Use_Count", None))


class _ReusedGradLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: ReusedGradLinear):
        # x: B x in, weight: out x in -> B x out
        ctx.save_for_backward(x, weight)
        ctx.owner = owner
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_w = ctx.owner._weight_grad(grad, x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class ReusedGradLinear(nn.Linear):
    """nn.Linear (same parameters and state_dict) for 2-D inputs; its weight gradient reuses memory."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self._grad_storage: torch.UntypedStorage | None = None

    def _free_storage(self) -> torch.UntypedStorage | None:
        """The kept storage when this layer holds the only reference to it, else None."""
        st = self._grad_storage
        if st is None or _use_count is None:
            return None
        need = self.weight.numel() * self.weight.element_size()
        if _use_count(st._cdata) != 1 or st.nbytes() != need or st.device != self.weight.device:
            return None
        return st

    def _weight_grad(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """g^T x (out x in), written into the kept storage when it is free."""
        st = self._free_storage() if grad.dtype == x.dtype == self.weight.dtype else None
        if st is None:
            out = torch.mm(grad.t(), x)
        else:
            out = torch.mm(grad.t(), x, out=grad.new_empty(0).set_(st, 0, self.weight.shape, self.weight.stride()))
        if self.training:
            self._grad_storage = out.untyped_storage()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x in -> B x out."""
        if x.dim() != 2 or not torch.is_grad_enabled() or not self.weight.requires_grad:
            return super().forward(x)
        if autocast_on(x.device.type):
            return super().forward(x)  # autocast chooses the dtypes; keep nn.Linear's path
        return _ReusedGradLinear.apply(x, self.weight, self.bias, self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_grad_storage": None}  # copies and pickles never carry the spare gradient

    def train(self, mode: bool = True) -> ReusedGradLinear:
        if not mode:
            self._grad_storage = None  # evaluation should not hold a spare gradient's memory
        return super().train(mode)
