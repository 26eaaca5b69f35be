"""Training losses against their formulas written out in float64, at saturation, and with partial labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msrn.engine.config import preset_config
from msrn.engine.evaluate import score_metrics
from msrn.engine.losses import LOSSES, asymmetric_loss, build_loss, focal_loss, objective, soft_margin_loss
from msrn.errors import MSRNError


def _problem(seed: int = 0, n: int = 6, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits in [-6, 6] and targets holding every code: 1, 0, -1 (difficult), -2 (unknown)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.rand(n, c, generator=g, dtype=torch.float64) * 12 - 6
    targets = torch.tensor([1, 0, 0, -1, -2], dtype=torch.float64)[torch.randint(0, 5, (n, c), generator=g)]
    targets[0] = torch.tensor([1.0, 0.0, -1.0, -2.0, 0.0])  # every code at least once
    return logits, targets


def _asl_formula(x: torch.Tensor, t: torch.Tensor, gneg: float, gpos: float, m: float) -> torch.Tensor:
    """ASL per the paper in float64: L+ = (1-p)^g+ log p, L- = p_m^g- log(1-p_m), p_m = max(p-m, 0)."""
    p = 1 / (1 + torch.exp(-x))
    pm = torch.clamp(p - m, min=0)
    y = (t != 0).double()
    weight = torch.where(pm > 0, pm.clamp(min=1e-300) ** gneg, 0.0)  # pm^g-, its gradient 0 where pm is 0
    per = -(y * (1 - p) ** gpos * torch.log(p) + (1 - y) * weight * torch.log(1 - pm))
    known = t != -2
    return per[known].mean()


def _focal_formula(x: torch.Tensor, t: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Focal loss per Lin et al. in float64: -alpha_t (1-p_t)^gamma log p_t."""
    p = 1 / (1 + torch.exp(-x))
    y = (t != 0).double()
    pt = torch.where(y == 1, p, 1 - p)
    at = torch.where(y == 1, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    per = -at * (1 - pt) ** gamma * torch.log(pt)
    return per[t != -2].mean()


def _bce_formula(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p = 1 / (1 + torch.exp(-x))
    y = (t != 0).double()
    per = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return per[t != -2].mean()


def _value_and_grad(fn, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = fn(x, t)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


CASES = [
    ("asl paper", lambda x, t: asymmetric_loss(x, t, 4.0, 0.0, 0.05), lambda x, t: _asl_formula(x, t, 4.0, 0.0, 0.05)),
    ("asl repo", lambda x, t: asymmetric_loss(x, t, 4.0, 1.0, 0.05), lambda x, t: _asl_formula(x, t, 4.0, 1.0, 0.05)),
    (
        "asl fractional",
        lambda x, t: asymmetric_loss(x, t, 0.5, 2.5, 0.2),
        lambda x, t: _asl_formula(x, t, 0.5, 2.5, 0.2),
    ),
    ("focal", lambda x, t: focal_loss(x, t, 2.0, 0.25), lambda x, t: _focal_formula(x, t, 2.0, 0.25)),
    ("focal g0.5", lambda x, t: focal_loss(x, t, 0.5, 0.7), lambda x, t: _focal_formula(x, t, 0.5, 0.7)),
    ("softmargin", soft_margin_loss, _bce_formula),
]


@pytest.mark.parametrize("name,loss,formula", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_its_float64_formula_value_and_gradient(name: str, loss, formula, seed: int) -> None:
    x, t = _problem(seed)
    want, want_grad = _value_and_grad(formula, x, t)
    got, got_grad = _value_and_grad(loss, x.float(), t.float())
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=2e-4, atol=1e-7)


def test_asl_without_focusing_or_clip_is_bce_and_the_soft_margin_loss() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 6, generator=g) * 4
    t = (torch.rand(8, 6, generator=g) < 0.4).float()
    asl = asymmetric_loss(x, t, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    torch.testing.assert_close(asl, F.binary_cross_entropy_with_logits(x, t), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(asl, F.multilabel_soft_margin_loss(x, t), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(asymmetric_loss(x, t), asl)  # the defaults do change it


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_are_finite_at_saturated_logits(name: str) -> None:
    loss = build_loss(name)
    x = torch.tensor([[100.0, -100.0, 100.0, -100.0, 100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0, -1.0, -1.0, -2.0, -2.0]])
    value = loss(x, t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    assert x.grad[0, 1] < 0  # a positive scored -100 is still pulled up
    # a negative scored +100 is pulled down, except by ASL, whose margin discards such likely mislabels
    assert x.grad[0, 2] > 0 if name != "asl" else abs(float(x.grad[0, 2])) < 1e-12
    assert x.grad[0, 6] == 0 and x.grad[0, 7] == 0  # unknown entries give nothing


@pytest.mark.parametrize("name", LOSSES)
def test_unknown_entries_are_left_out_and_difficult_counts_positive(name: str) -> None:
    loss = build_loss(name)
    x, t = _problem(5)
    x, t = x.float(), t.float()
    known = t != -2
    rows = [loss(x[i : i + 1, known[i]], t[i : i + 1, known[i]]) * known[i].sum() for i in range(len(x))]
    torch.testing.assert_close(loss(x, t), torch.stack(rows).sum() / known.sum(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss(x, t), loss(x, torch.where(t == -1, torch.ones_like(t), t)))
    assert loss(x, torch.full_like(t, -2.0)) == 0  # a batch with nothing known


def test_training_loss_keeps_the_reference_formula_on_full_labels() -> None:
    from msrn.engine.losses import soft_margin_loss as training_loss

    x = torch.randn(5, 4)
    t = torch.tensor([[1, 0, -1, 0]] * 5, dtype=torch.float32)
    assert torch.equal(training_loss(x, t), F.multilabel_soft_margin_loss(x, (t != 0).float()))


def test_config_selects_and_checks_the_loss() -> None:
    cfg = preset_config("synthetic", loss="asl")
    assert (cfg.loss, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip) == ("asl", 4.0, 0.0, 0.05)
    assert preset_config("synthetic").loss == "softmargin"
    with pytest.raises(MSRNError, match="--loss"):
        preset_config("synthetic", loss="hinge")
    with pytest.raises(MSRNError, match="asl-clip"):
        preset_config("synthetic", loss="asl", asl_clip=1.5)


@pytest.mark.parametrize("name", LOSSES)
def test_reported_loss_is_the_objective_that_training_minimises(name: str) -> None:
    """score_metrics reports losses.objective with the run's loss, not the soft margin: the same logits and
    targets (difficult positive, unknown left out) give the training value plus the group loss."""
    x, t = (a.float() for a in _problem(seed=4))
    loss = build_loss(name)
    reported = score_metrics(x.numpy(), t.numpy(), group_loss=0.3, loss=loss)["loss"]
    assert reported == pytest.approx(float(objective(loss, x, t, torch.tensor(0.3))), rel=1e-6)
    assert reported == float(loss(x, t)) + 0.3  # the sum in float64, as the figures always were
    if name != "softmargin":
        assert reported != pytest.approx(score_metrics(x.numpy(), t.numpy(), group_loss=0.3)["loss"], rel=1e-3)
