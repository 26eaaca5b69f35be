"""fc1's ReusedGradLinear: nn.Linear's numbers, and its gradient memory reused only when that is safe."""

import copy
import pickle

import pytest
import torch
from torch import nn

import msrn.models._linear as linear_module
from msrn.models._linear import ReusedGradLinear, checked_use_count


def _pair(seed: int = 0) -> tuple[nn.Linear, ReusedGradLinear]:
    torch.manual_seed(seed)
    ref = nn.Linear(40, 7)
    ours = ReusedGradLinear(40, 7)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _step(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (layer(x) * w).sum().backward()
    return x.grad


def test_values_and_gradients_match_nn_linear():
    ref, ours = _pair()
    x, w = torch.randn(5, 40), torch.randn(5, 7)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    gx_ref, gx = _step(ref, x, w), _step(ours, x, w)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-6, atol=1e-6)
    assert ours.state_dict().keys() == ref.state_dict().keys()


def _three_steps(ref: nn.Linear, ours: ReusedGradLinear) -> list[int]:
    """Three zero_grad(set_to_none) steps on both layers, gradients compared; the address of each of ours."""
    ptrs = []
    for _ in range(3):
        x, w = torch.randn(3, 40), torch.randn(3, 7)
        ref.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)
        _step(ref, x, w)
        _step(ours, x, w)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-6, atol=1e-6)
        ptrs.append(ours.weight.grad.data_ptr())
    return ptrs


def test_storage_is_reused_after_set_to_none_and_gradients_stay_right():
    ptrs = _three_steps(*_pair(1))
    assert ptrs[1] == ptrs[0] and ptrs[2] == ptrs[0]  # one allocation, written three times


def test_accumulation_without_zeroing_adds_like_nn_linear():
    ref, ours = _pair(2)
    for _ in range(3):
        x, w = torch.randn(3, 40), torch.randn(3, 7)
        _step(ref, x, w)
        _step(ours, x, w)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)


def test_a_gradient_still_referenced_elsewhere_is_never_overwritten():
    _, ours = _pair(3)
    x, w = torch.randn(3, 40), torch.randn(3, 7)
    _step(ours, x, w)
    kept = ours.weight.grad.view(-1)  # a view survives zero_grad
    snapshot = kept.clone()
    ours.zero_grad(set_to_none=True)
    _step(ours, torch.randn(3, 40), torch.randn(3, 7))
    assert torch.equal(kept, snapshot)
    assert ours.weight.grad.data_ptr() != kept.data_ptr()


def test_eval_releases_the_storage_and_copies_do_not_carry_it():
    _, ours = _pair(4)
    _step(ours, torch.randn(3, 40), torch.randn(3, 7))
    assert ours._grad_storage is not None
    assert copy.deepcopy(ours)._grad_storage is None
    assert pickle.loads(pickle.dumps(ours))._grad_storage is None
    ours.eval()
    assert ours._grad_storage is None


@pytest.mark.parametrize("shape", [(2, 3, 40), (40,)])
def test_other_input_ranks_fall_back_to_nn_linear(shape):
    ref, ours = _pair(5)
    x = torch.randn(*shape)
    torch.testing.assert_close(ours(x), ref(x))


def test_bf16_autocast_takes_nn_linear_path():
    ref, ours = _pair(6)
    x = torch.randn(4, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x), ref(x)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a, b)


def _raises(*args):
    raise TypeError("the private API changed its signature")


@pytest.mark.parametrize("broken", [None, _raises, lambda cdata: 7])  # absent, changed, or answering wrongly
def test_without_a_working_use_count_the_public_path_gives_the_same_gradients(broken, monkeypatch) -> None:
    """torch._C._storage_Use_Count is private: checked_use_count refuses it unless it answers as it should,
    and then no gradient memory is reused (nn.Linear's behaviour), with the same values."""
    assert checked_use_count(torch._C._storage_Use_Count) is torch._C._storage_Use_Count  # this torch's works
    assert checked_use_count(broken) is None
    monkeypatch.setattr(linear_module, "_use_count", checked_use_count(broken))
    ref, ours = _pair(2)
    _three_steps(ref, ours)
    ours.zero_grad(set_to_none=True)  # the layer alone holds its last gradient's memory
    assert ours._grad_storage is not None and ours._free_storage() is None  # not reused: a fresh one each step
    monkeypatch.setattr(linear_module, "_use_count", torch._C._storage_Use_Count)
    assert ours._free_storage() is not None  # with the working function that memory would be reused
