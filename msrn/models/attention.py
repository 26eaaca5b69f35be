"""Label-guided attention (docs/design.md §5) without materialising B x N x M x D tensors.

For image b, semantic vector m (a label or a group) and channel d:

    alpha[b, n, m, d] = softmax_n( F[b, n, d] * S[m, d] ),   V[b, m, d] = sum_n alpha * F

The reference builds alpha for all m at once. Here the (image, channel) rows and the semantics
are cut into tiles whose R x m x N temporary fits the CPU's L2 cache (CHUNK_ELEMENTS), so the
exponentials are computed, reduced and dropped without a trip to main memory. In each tile the
shifted scores come from one batched matmul with inner size 2, exp runs in place, and the three
sums over n (sum e, sum e F, sum e F^2) are one more batched matmul. A custom autograd function
recomputes each tile in backward instead of storing it; the gradients are closed-form:

    dV/dF[n] = alpha[n] * (1 + S * (F[n] - V)),    dV/dS = sum_n alpha[n] (F[n] - V)^2

so forward and backward each evaluate exp once per element of B x N x M x D.

The same attention is also PyTorch's scaled-dot-product attention with one head per (image, channel):
head dimension 1, queries S[m, d], keys and values F[b, n, d], scale 1. Zero-padding the head dimension
changes no product, and the fused kernels (flash, memory-efficient, cuDNN on CUDA; flash on CPU) run
forward and backward with an online softmax, never holding B x N x M x D.

The forms side by side, chosen by name in `attend` ("auto": the device's fastest, see `default_form`):
"fused" (scaled-dot-product attention), "chunked" (the tiles above), "naive" (the spec's formula written
literally, for tests and benchmarks) and "traceable" (the formula in plain tensor ops, in blocks of
semantics sized to TRACE_ELEMENTS per image, for ONNX export: neither a custom autograd function nor the
fused kernels trace; each block is a copy of its ops in the graph, so the blocks are as large as the budget lets).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# elements of one tile's R x m x N float32 temporary: 512K elements = 2 MiB, half of it per thread in a 2 MiB L2
# (benchmarks/bench_attention.py at batch 2 and 4: the fastest of 256K, 512K and 1M; figures in BENCHMARKS.md)
CHUNK_ELEMENTS = int(os.environ.get("MSRN_ATTENTION_CHUNK", 1 << 19))


# Shifted scores are <= 0, and the row's largest term is exp(0) = 1. Far below that, exp gives tiny
# floats whose products with F in the moment sums are denormal, which x86 computes far slower
# (BENCHMARKS.md measures it on the COCO-sized forward). So
# scores are floored at -50: each floored term is at most exp(-50) = 2e-22 next to the 1, which
# moves a softmax over N positions by at most N * 2e-22 relative, far below float32's 6e-8.
EXP_FLOOR = -50.0
# elements per image of the traceable form's m x D x N block (32 MiB in float32): bounds the exported graph's
# temporaries while keeping its copies of the block few (one at 5,000 labels on msrn_tiny at 64 px; about
# 20 semantics per block for D = 512 at 448 px, N = 784, the size of the fixed 16 it replaces)
TRACE_ELEMENTS = 1 << 23
# head dimension of the fused form: CUDA's fused kernels need a multiple of 8; the CPU flash kernel takes 1,
# and every padded column is work for nothing there (benchmarks/bench_attention.py)
HEAD_DIM = {"cpu": 1}
DEFAULT_HEAD_DIM = 8


def _tile_steps(rows: int, m: int, n: int) -> tuple[int, int]:
    """(rows, semantics) per tile so that a rows x semantics x n tile holds at most CHUNK_ELEMENTS (1 x 1 at least)."""
    budget = max(1, CHUNK_ELEMENTS // max(1, n))
    mstep = min(m, budget)
    return min(rows, max(1, budget // mstep)), mstep


def _score_factors(fc: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[bool] | None]:
    """Factors whose batched product is F*S - max_n F*S, (R x M x 2) @ (R x 2 x N), and the rows that need EXP_FLOOR."""
    # fc: R x N (centred rows), s: R x M. The max over n of s*F is s*max F (s >= 0) or s*min F (s < 0),
    # so the shifted score is s*(F - max F) or s*(F - min F): one of the two terms is zero.
    hi, lo = fc.amax(-1, keepdim=True), fc.amin(-1, keepdim=True)  # R x 1
    shifted = fc.new_empty(fc.shape[0], 2, fc.shape[1])  # R x 2 x N, written in place: no stacked temporaries
    torch.sub(fc, hi, out=shifted[:, 0])
    torch.sub(fc, lo, out=shifted[:, 1])
    signs = torch.stack([s.clamp_min(0), s.clamp_max(0)], -1)  # R x M x 2
    # A row's lowest score is -max|s| * (max F - min F); where that stays above EXP_FLOOR the clamp changes
    # nothing, and on CPU its pass over the tile is skipped (trained models rarely come near the floor).
    # On other devices one host sync per call would cost more than the clamp, so every tile is clamped.
    floor = None
    if fc.device.type == "cpu":
        floor = (s.abs().amax(-1) * (hi - lo).squeeze(-1) > -EXP_FLOOR).tolist()  # R
    return signs, shifted, floor


def _exp_tiles(
    signs: torch.Tensor, shifted: torch.Tensor, floor: list[bool] | None
) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """(rows, semantics, e) per tile, e = exp(shifted score) (r x k x N), written into one reused buffer."""
    # signs: R x M x 2, shifted: R x 2 x N, floor: per row, whether a score can fall below EXP_FLOOR
    rows, m, n = signs.shape[0], signs.shape[1], shifted.shape[-1]
    rstep, mstep = _tile_steps(rows, m, n)
    buf = shifted.new_empty(rstep * mstep * n)
    for i in range(0, rows, rstep):
        r = min(rstep, rows - i)
        clamp = floor is None or any(floor[i : i + r])
        for j in range(0, m, mstep):
            k = min(mstep, m - j)
            e = torch.bmm(signs[i : i + r, j : j + k], shifted[i : i + r], out=buf[: r * k * n].view(r, k, n))
            yield slice(i, i + r), slice(j, j + k), (e.clamp_min_(EXP_FLOOR) if clamp else e).exp_()


class _LabelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        # feats: B x D x N, sem: M x D -> out B x M x D
        b, d, n = feats.shape
        m = sem.shape[0]
        mu = feats.mean(-1, keepdim=True)  # B x D x 1
        fc = (feats - mu).reshape(b * d, n)  # centring changes no softmax and keeps the variance well conditioned
        s = sem.t().expand(b, d, m).reshape(b * d, m)  # R x M, R = B*D rows
        signs, shifted, floor = _score_factors(fc, s)
        cols = fc.new_empty(b * d, 3, n)  # [F, F^2, 1] per row, R x 3 x N
        cols[:, 0] = fc
        torch.mul(fc, fc, out=cols[:, 1])
        cols[:, 2] = 1
        moments = feats.new_empty(b * d, 3, m)
        for rows, sems, e in _exp_tiles(signs, shifted, floor):
            # (3 x N) @ (N x k) per row: MKL runs this faster than the same sums as (k x N) @ (N x 3) (BENCHMARKS.md)
            torch.bmm(cols[rows], e.transpose(1, 2), out=moments[rows, :, sems])
        den = moments[:, 2]  # R x M
        vc = moments[:, 0] / den  # centred output
        var = (moments[:, 1] / den - vc * vc).clamp_min_(0)
        ctx.save_for_backward(fc, s, vc, var, den)
        ctx.shape = (b, d, n, m)
        return (vc.view(b, d, m) + mu).permute(0, 2, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fc, s, vc, var, den = ctx.saved_tensors
        b, d, n, m = ctx.shape
        g = grad.permute(0, 2, 1).reshape(b * d, m)  # R x M
        grad_sem = (g * var).view(b, d, m).sum(0).t()  # M x D
        coef = torch.stack([g * (1 - s * vc), g * s], 1).div_(den[:, None, :])  # R x 2 x M
        signs, shifted, floor = _score_factors(fc, s)
        grad_rows = fc.new_zeros(b * d, 2, n)
        for rows, sems, e in _exp_tiles(signs, shifted, floor):
            grad_rows[rows].baddbmm_(coef[rows, :, sems], e)
        grad_feats = torch.addcmul(grad_rows[:, 0], fc, grad_rows[:, 1])  # R x N
        return grad_feats.view(b, d, n), grad_sem


# torch.compile leaves this function to eager: traced, its tile loops unroll into a graph that inductor
# schedules with far larger temporaries (BENCHMARKS.md has the peak memory), for no gain.
@torch.compiler.disable
def label_attention(feats: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """V[b, m, d] = sum_n softmax_n(F[b,d,n] S[m,d]) F[b,d,n]; feats B x D x N, sem M x D -> B x M x D.

    Runs in float32 whatever the autocast state: the softmax over hundreds of positions is
    where low precision would cost accuracy, and its cost is memory traffic, not FLOPs.
    """
    dtype = torch.promote_types(feats.dtype, torch.float32)
    with torch.autocast(feats.device.type, enabled=False):
        return _LabelAttention.apply(feats.to(dtype).contiguous(), sem.to(dtype))


def label_attention_naive(feats: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """The spec's formula with the full B x N x M x D tensor (memory-hungry; tests and benchmarks)."""
    dtype = torch.promote_types(feats.dtype, torch.float32)
    f = feats.to(dtype).transpose(1, 2)  # B x N x D
    alpha = torch.softmax(f[:, :, None, :] * sem.to(dtype)[None, None], dim=1)  # B x N x M x D
    return (alpha * f[:, :, None, :]).sum(1)


def trace_chunk(d: int, n: int) -> int:
    """Semantics per block of the traceable form: as many as keep an m x D x N block within TRACE_ELEMENTS."""
    return max(1, TRACE_ELEMENTS // max(1, d * n))


def traceable_attention(feats: torch.Tensor, sem: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """label_attention_naive's formula in blocks of `chunk` semantics (default: trace_chunk of the shapes,
    read when traced): B x D x N, M x D -> B x M x D."""
    if chunk is None:
        chunk = trace_chunk(feats.shape[1], feats.shape[2])
    outs = []
    for start in range(0, sem.shape[0], chunk):
        s = sem[start : start + chunk]  # m x D
        alpha = torch.softmax(feats[:, None] * s[None, :, :, None], dim=-1)  # B x m x D x N
        outs.append((alpha * feats[:, None]).sum(-1))
    return torch.cat(outs, 1)


def fused_attention(feats: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """The attention as scaled-dot-product attention, one head per (image, channel): B x D x N, M x D -> B x M x D.

    Under autocast it runs in the autocast dtype (the kernels accumulate in float32), otherwise in
    float32 or the inputs' wider type.
    """
    device = feats.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(feats.dtype, sem.dtype), torch.float32)
    b, d, _ = feats.shape
    pad = HEAD_DIM.get(device, DEFAULT_HEAD_DIM) - 1
    kv = F.pad(feats.to(dtype).unsqueeze(-1), (0, pad))  # B x D x N x h: [F, 0, ..., 0]
    # B x D x M x h: [S, 0, ..., 0], made contiguous: not every CUDA kernel takes a batch stride of 0
    q = F.pad(sem.to(dtype).t().unsqueeze(-1), (0, pad)).expand(b, d, -1, -1).contiguous()
    with torch.autocast(device, enabled=False):  # the dtype is chosen above
        out = F.scaled_dot_product_attention(q, kv, kv, scale=1.0)  # B x D x M x h: [V, 0, ..., 0]
    return out[..., 0].transpose(1, 2)


FORMS = {
    "fused": fused_attention,
    "chunked": label_attention,
    "naive": label_attention_naive,
    "traceable": traceable_attention,
}


def default_form(feats: torch.Tensor, sem: torch.Tensor) -> str:
    """The form `attend` runs for "auto": the fused kernels, except on CPU when gradients flow, where
    the tiles' closed-form backward beats the flash kernel's (BENCHMARKS.md, bench_attention.py)."""
    grads = torch.is_grad_enabled() and (feats.requires_grad or sem.requires_grad)
    return "chunked" if grads and feats.device.type == "cpu" else "fused"


def attend(feats: torch.Tensor, sem: torch.Tensor, form: str | None = None) -> torch.Tensor:
    """Label-guided attention in one of its FORMS (the same numbers); with no form (or "auto") the device's
    fastest: feats B x D x N, sem M x D -> B x M x D."""
    if form is None or form == "auto":
        form = default_form(feats, sem)
    if form not in FORMS:
        raise ValueError(f"attention must be auto or one of {', '.join(FORMS)}, got {form!r}")
    return FORMS[form](feats, sem)
