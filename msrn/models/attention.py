"""Label-guided attention (spec section 5) without materialising B x N x M x D tensors.

For image b, semantic vector m (a label or a group) and channel d:

    alpha[b, n, m, d] = softmax_n( F[b, n, d] * S[m, d] ),   V[b, m, d] = sum_n alpha * F

The reference builds alpha for all m at once. Here the semantics are processed in chunks
whose temporaries fit a fixed budget, the two sums over n become one batched matmul, and a
custom autograd function recomputes each chunk in backward instead of storing it. The
gradients are closed-form:

    dV/dF[n] = alpha[n] * (1 + S * (F[n] - V)),    dV/dS = sum_n alpha[n] (F[n] - V)^2

`label_attention_naive` is the spec's formula written literally, for tests and benchmarks.
"""
from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

# elements of one chunk's B x D x m x N temporary (float32): 4M elements = 16 MB
CHUNK_ELEMENTS = int(os.environ.get("MSRN_ATTENTION_CHUNK", 1 << 22))


def _chunks(b: int, d: int, m: int, n: int) -> list[slice]:
    step = max(1, min(m, CHUNK_ELEMENTS // max(1, b * d * n)))
    return [slice(i, min(m, i + step)) for i in range(0, m, step)]


def _exp_scores(fc: torch.Tensor, st: torch.Tensor, fmax: torch.Tensor, fmin: torch.Tensor) -> torch.Tensor:
    """exp(F*S - max_n F*S) for one chunk: B x D x m x N, the row max found without a reduction."""
    # fc: B x D x N (centred), st: D x m, fmax/fmin: B x D
    mx = torch.where(st >= 0, st * fmax[..., None], st * fmin[..., None])  # B x D x m
    z = fc[:, :, None, :] * st[None, :, :, None]  # B x D x m x N
    return z.sub_(mx[..., None]).exp_()


class _LabelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        # feats: B x D x N, sem: M x D -> out B x M x D
        b, d, n = feats.shape
        m = sem.shape[0]
        mu = feats.mean(-1, keepdim=True)
        fc = feats - mu  # centring changes no softmax and keeps the variance well conditioned
        st = sem.t().contiguous()  # D x M
        fmax, fmin = fc.amax(-1), fc.amin(-1)
        cols = torch.stack([fc, fc * fc, torch.ones_like(fc)], -1).reshape(b * d, n, 3)
        moments = feats.new_empty(b, d, m, 3)
        for sl in _chunks(b, d, m, n):
            e = _exp_scores(fc, st[:, sl], fmax, fmin)
            k = e.shape[2]
            moments[:, :, sl] = torch.bmm(e.reshape(b * d, k, n), cols).reshape(b, d, k, 3)
        den = moments[..., 2]
        vc = moments[..., 0] / den  # B x D x M, centred output
        var = (moments[..., 1] / den - vc * vc).clamp_min_(0)
        ctx.save_for_backward(fc, st, fmax, fmin, vc, var, den)
        return (vc + mu).permute(0, 2, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fc, st, fmax, fmin, vc, var, den = ctx.saved_tensors
        b, d, n = fc.shape
        g = grad.permute(0, 2, 1)  # B x D x M
        grad_sem = (g * var).sum(0).t()  # M x D
        coef = torch.stack([g * (1 - st * vc), g * st], 2) / den[:, :, None, :]  # B x D x 2 x M
        grad_feats = torch.zeros(b * d, 2, n, dtype=fc.dtype, device=fc.device)
        for sl in _chunks(b, d, st.shape[1], n):
            e = _exp_scores(fc, st[:, sl], fmax, fmin)
            k = e.shape[2]
            grad_feats.baddbmm_(coef[..., sl].reshape(b * d, 2, k), e.reshape(b * d, k, n))
        grad_feats = grad_feats.reshape(b, d, 2, n)
        return grad_feats[:, :, 0] + fc * grad_feats[:, :, 1], grad_sem


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
