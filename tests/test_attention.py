"""The tiled label attention equals the spec's formula (values and gradients) and stays small in memory."""
from __future__ import annotations

import pytest
import torch

import msrn.models.attention as attention
from msrn.models.attention import label_attention, label_attention_naive


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _inputs(b: int, d: int, n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, n, generator=g) * 2 + 0.5  # B x D x N, off-centre on purpose
    sem = torch.randn(m, d, generator=g)  # M x D, both signs
    return feats, sem


def _values_and_grads(fn, feats: torch.Tensor, sem: torch.Tensor, grad_out: torch.Tensor):
    f, s = feats.clone().requires_grad_(), sem.clone().requires_grad_()
    out = fn(f, s)
    gf, gs = torch.autograd.grad(out, (f, s), grad_out)
    return out.detach(), gf, gs


# chunk sizes: one element (one row x one semantic per tile), smaller than M*N, one row, everything
@pytest.mark.parametrize("chunk", [1, 30, 49 * 7, 49 * 7 * 5, 1 << 18])
@pytest.mark.parametrize("shape", [(2, 16, 49, 7), (3, 5, 10, 11)])
def test_matches_naive_float32(monkeypatch: pytest.MonkeyPatch, chunk: int, shape: tuple[int, ...]) -> None:
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", chunk)
    feats, sem = _inputs(*shape)
    grad_out = torch.randn(shape[0], shape[3], shape[1], generator=torch.Generator().manual_seed(1))
    got = _values_and_grads(label_attention, feats, sem, grad_out)
    want = _values_and_grads(label_attention_naive, feats, sem, grad_out)  # float32 reference
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape
        assert _rel(g, w) < 1e-5


def test_matches_naive_float64_gradcheck() -> None:
    feats, sem = _inputs(2, 3, 6, 4)
    f, s = feats.double().requires_grad_(), sem.double().requires_grad_()
    assert torch.autograd.gradcheck(label_attention, (f, s))
    assert _rel(label_attention(f, s), label_attention_naive(f, s)) < 1e-12


def test_large_scores_do_not_overflow() -> None:
    feats, sem = _inputs(1, 4, 20, 3)
    feats, sem = feats * 30, sem * 30  # scores of several thousand: a plain exp would overflow
    out = label_attention(feats, sem)
    assert torch.isfinite(out).all()
    assert _rel(out, label_attention_naive(feats.double(), sem.double())) < 1e-5


@pytest.mark.parametrize("chunk", [10 * 3, 1 << 18])  # tiles of one row and tiles of every row
def test_rows_near_the_exp_floor_are_clamped_and_the_others_exact(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", chunk)
    feats, sem = _inputs(2, 6, 10, 3)
    feats[:, 1::3] *= 40  # a third of the (image, channel) rows reach scores far below the floor
    fc = (feats - feats.mean(-1, keepdim=True)).reshape(12, 10)
    s = sem.t().expand(2, 6, 3).reshape(12, 3)
    *_, floor = attention._score_factors(fc, s)
    lowest = (s.abs().amax(-1) * (fc.amax(-1) - fc.amin(-1))).tolist()
    assert floor == [low > -attention.EXP_FLOOR for low in lowest] and any(floor) and not all(floor)
    grad_out = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    got = _values_and_grads(label_attention, feats, sem, grad_out)
    want = _values_and_grads(label_attention_naive, feats.double(), sem.double(), grad_out.double())
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all() and _rel(g, w) < 1e-5


def test_bf16_autocast_runs_in_float32_and_is_close() -> None:
    feats, sem = _inputs(2, 16, 49, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = label_attention(feats.bfloat16(), sem)
    assert out.dtype == torch.float32
    want = label_attention_naive(feats.bfloat16().float(), sem)  # same rounded input, exact attention
    assert _rel(out, want) < 1e-5
    assert _rel(out, label_attention_naive(feats, sem)) < 2e-2  # bf16 input rounding only


def _saved_bytes(fn, feats: torch.Tensor, sem: torch.Tensor) -> int:
    """Bytes autograd keeps for backward while fn runs (tensors packed by saved-tensor hooks)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    f, s = feats.clone().requires_grad_(), sem.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(f, s).sum().backward()
    return total


def test_backward_does_not_keep_the_big_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 1024)
    b, d, n, m = 2, 32, 64, 20
    feats, sem = _inputs(b, d, n, m)
    big = b * n * m * d * 4  # one B x N x M x D float32 tensor
    chunked = _saved_bytes(label_attention, feats, sem)
    assert chunked < big / 8  # O(B*D*(N+M)) saved, not O(B*N*M*D)
    assert _saved_bytes(label_attention_naive, feats, sem) >= big  # the literal formula keeps it


def test_no_grad_inference_matches() -> None:
    feats, sem = _inputs(2, 8, 30, 5)
    with torch.no_grad():
        out = label_attention(feats, sem)
    assert not out.requires_grad
    assert _rel(out, label_attention_naive(feats, sem)) < 1e-5


def test_the_three_forms_agree_by_name() -> None:
    feats, sem = _inputs(2, 8, 12, 37)  # 37 semantics: the traceable form's blocks do not divide them
    want = label_attention_naive(feats.double(), sem.double())
    for form in attention.FORMS:
        assert _rel(attention.attend(feats, sem, form), want) < 1e-5, form
    with pytest.raises(ValueError, match="chunked"):
        attention.attend(feats, sem, "approximate")
