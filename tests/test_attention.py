"""The tiled and fused label attention equal the spec's formula (values and gradients) and stay small in memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

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


# ------------------------------------------------------------------ the fused form (scaled-dot-product attention)


def _float64_case(b: int, d: int, n: int, m: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, n, generator=g, dtype=torch.float64) * scale + 0.3
    sem = torch.randn(m, d, generator=g, dtype=torch.float64) * scale
    grad_out = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    return feats, sem, grad_out


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    d=st.integers(1, 9),
    n=st.integers(1, 40),
    m=st.integers(1, 12),
    scale=st.sampled_from([0.1, 1.0, 8.0, 40.0]),
    head=st.sampled_from([1, 8]),
    seed=st.integers(0, 2**16),
)
def test_fused_matches_naive_float64(b: int, d: int, n: int, m: int, scale: float, head: int, seed: int) -> None:
    # head 8 is the padding CUDA's kernels need, run here through the CPU kernel; scale 40: |F S| in the thousands
    feats, sem, grad_out = _float64_case(b, d, n, m, scale, seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(attention.HEAD_DIM, "cpu", head)
        got = _values_and_grads(attention.fused_attention, feats, sem, grad_out)
    want = _values_and_grads(label_attention_naive, feats, sem, grad_out)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float64 and g.shape == w.shape
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9 * (1 + w.abs().max().item()))
    if n == 1:  # one position: the softmax is 1, V is F, and S gets no gradient
        assert torch.allclose(got[0], feats.transpose(1, 2).expand(b, m, d)) and got[2].abs().max() < 1e-12


def test_fused_gradcheck() -> None:
    feats, sem = _inputs(2, 3, 6, 4)
    f, s = feats.double().requires_grad_(), sem.double().requires_grad_()
    assert torch.autograd.gradcheck(attention.fused_attention, (f, s))


def test_fused_float32_matches_naive_and_stays_finite_at_large_scores() -> None:
    feats, sem = _inputs(2, 16, 49, 7)
    grad_out = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    for k in (1.0, 30.0):  # 30: scores of several thousand, whose float32 rounding (~1e-4) moves the weights
        got = _values_and_grads(attention.fused_attention, feats * k, sem * k, grad_out)
        lit = _values_and_grads(label_attention_naive, feats * k, sem * k, grad_out)  # the formula in float32
        want = _values_and_grads(label_attention_naive, (feats * k).double(), (sem * k).double(), grad_out.double())
        for g, f32, w in zip(got, lit, want, strict=True):
            assert g.dtype == torch.float32 and torch.isfinite(g).all()
            assert _rel(g, w) < 2 * _rel(f32, w) + 2e-6  # float32 rounding: as near as the literal formula


def test_fused_bf16_autocast_runs_in_bf16_within_its_rounding() -> None:
    feats, sem = _inputs(2, 16, 49, 7)
    grad_out = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(1))
    for k in (1.0, 30.0):
        f, s = (feats * k).requires_grad_(), (sem * k).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention.fused_attention(f, s)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        gf, gs = torch.autograd.grad(out, (f, s), grad_out)
        assert gf.dtype == gs.dtype == torch.float32 and torch.isfinite(gf).all() and torch.isfinite(gs).all()
        # against the exact attention of the same bf16-rounded inputs: a few bf16 roundings (2^-8 each) of the
        # weights and the output; the products F*S of two bf16 numbers are exact in the float32 accumulator
        want = label_attention_naive(f.detach().bfloat16().double(), s.detach().bfloat16().double())
        assert _rel(out, want) < 2**-6


def test_fused_fp32_stays_fp32_and_float64_stays_float64() -> None:
    feats, sem = _inputs(1, 4, 9, 3)
    assert attention.fused_attention(feats, sem).dtype == torch.float32
    assert attention.fused_attention(feats.double(), sem.double()).dtype == torch.float64
    assert attention.fused_attention(feats.bfloat16(), sem).dtype == torch.float32  # no autocast: float32 at least


def _largest_allocation(fn, feats: torch.Tensor, sem: torch.Tensor) -> int:
    """Bytes of the largest single allocation any operator makes in fn's forward and backward."""
    f, s = feats.clone().requires_grad_(), sem.clone().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(f, s).sum().backward()
    return max(max(e.self_cpu_memory_usage, 0) for e in prof.events())


def test_fused_holds_no_b_n_m_d_tensor_on_the_cpu_flash_kernel_but_the_math_backend_does() -> None:
    b, d, n, m = 2, 64, 256, 40
    feats, sem = _inputs(b, d, n, m)
    big = b * n * m * d * 4  # one B x N x M x D float32 tensor
    assert _saved_bytes(attention.fused_attention, feats, sem) < big / 8  # inputs, output and log-sum-exp
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # what the CPU dispatches to (asserting it: no fallback)
        assert _largest_allocation(attention.fused_attention, feats, sem) < big / 4
    # the math backend (PyTorch's fallback) materialises the B x D x M x N weights and keeps them for backward
    with sdpa_kernel(SDPBackend.MATH):
        assert _largest_allocation(attention.fused_attention, feats, sem) >= big
        assert _saved_bytes(attention.fused_attention, feats, sem) >= big


def test_auto_picks_by_device_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    feats, sem = _inputs(2, 8, 12, 5)
    assert attention.default_form(feats, sem) == "fused"  # CPU inference
    assert attention.default_form(feats.requires_grad_(), sem) == "chunked"  # CPU training: the tiles' backward
    with torch.no_grad():
        assert attention.default_form(feats, sem) == "fused"
    meta = feats.detach().to("meta").requires_grad_()  # any other device: the fused kernels, also for training
    assert attention.default_form(meta, sem.to("meta")) == "fused"
    calls = []
    monkeypatch.setitem(attention.FORMS, "fused", lambda f, s: calls.append("fused") or label_attention_naive(f, s))
    with torch.no_grad():
        out = attention.attend(feats, sem)
    assert calls == ["fused"] and _rel(out, label_attention_naive(feats, sem)) < 1e-6


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_default_form_is_fused_and_matches_float64(amp: str) -> None:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        feats, sem = _inputs(4, 64, 196, 21)
        grad_out = torch.randn(4, 21, 64, generator=torch.Generator().manual_seed(1)).cuda()
        f, s = feats.cuda().requires_grad_(), sem.cuda().requires_grad_()
        assert attention.default_form(f, s) == "fused"  # also when gradients flow
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = attention.attend(f, s)
        assert out.dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
        got = (out, *torch.autograd.grad(out, (f, s), grad_out.to(out.dtype)))
        rounded = (lambda t: t.bfloat16()) if amp == "bf16" else (lambda t: t)
        want = _values_and_grads(
            label_attention_naive, rounded(feats).double(), rounded(sem).double(), grad_out.double()
        )
        for g, w in zip(got, want, strict=True):
            assert torch.isfinite(g).all() and _rel(g.cpu(), w) < (2**-6 if amp == "bf16" else 1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_checkpoints_that_stored_a_form_run_the_device_choice() -> None:
    from msrn.models.attention import default_form
    from msrn.models.msrn import MSRNConfig

    # the form is chosen when the model runs: a stored one (the old default "chunked", or "naive") is dropped
    assert MSRNConfig.from_dict({"attention": "chunked"}) == MSRNConfig()
    assert MSRNConfig.from_dict({"attention": "naive"}) == MSRNConfig()
    feats, sem = torch.randn(1, 4, 6, requires_grad=True), torch.randn(3, 4)
    assert default_form(feats, sem) == "chunked"  # CPU training: the tiles' closed-form backward
    with torch.no_grad():
        assert default_form(feats, sem) == "fused"
