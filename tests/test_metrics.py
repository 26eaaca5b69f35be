"""Tests for msrn.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference_impl import reference_top_k_matrix, reference_tuned_search
from sklearn.metrics import (
    average_precision_score,
    coverage_error,
    label_ranking_average_precision_score,
    label_ranking_loss,
    precision_score,
    recall_score,
)

from msrn.metrics import (
    REFERENCE_GRID,
    average_precision,
    format_metrics,
    map_text,
    multilabel_metrics,
    per_label_thresholds,
    reference_order_average_precision,
    reference_tuned_metrics,
    sigmoid,
    subset_metrics,
)

SIX = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per label by scikit-learn with difficult (-1) rows removed by hand; NaN without positives."""
    out = []
    for j in range(scores.shape[1]):
        keep = targets[:, j] != -1
        y = targets[keep, j] == 1
        out.append(average_precision_score(y, scores[keep, j]) if y.any() else np.nan)
    return np.array(out)


@st.composite
def problems(draw: st.DrawFn, ties: bool, min_labels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random scores and {1, 0, -1} targets; with ties the scores take only a few distinct values."""
    n = draw(st.integers(1, 30))
    c = draw(st.integers(min_labels, 6))
    if ties:
        elements = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
    else:
        elements = st.floats(0, 1, allow_nan=False, width=64)
    scores = draw(arrays(np.float64, (n, c), elements=elements, unique=not ties))
    targets = draw(arrays(np.int8, (n, c), elements=st.sampled_from([1, 0, 0, -1])))
    return scores, targets


@settings(max_examples=60, deadline=None)
@given(problems(ties=False))
def test_ap_matches_sklearn_without_ties(problem: tuple[np.ndarray, np.ndarray]) -> None:
    scores, targets = problem
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(problems(ties=True))
def test_ap_matches_sklearn_with_ties(problem: tuple[np.ndarray, np.ndarray]) -> None:
    scores, targets = problem
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), atol=1e-12)


def test_ap_is_mean_precision_at_positive_ranks() -> None:
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    targets = np.array([[1], [0], [1], [-1], [1]])
    # Ranking without the difficult row: P@1 = 1, P@3 = 2/3, P@4 = 3/4.
    assert average_precision(scores, targets)[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_ap_ties_form_one_threshold() -> None:
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    targets = np.array([[0], [1], [0], [1]])
    # Both tied rows enter together: precision 1/3 for the tied positive, 2/4 for the last one.
    assert average_precision(scores, targets)[0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_labels_without_positives_are_left_out_of_map_and_listed() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((20, 4))
    targets = (rng.random((20, 4)) < 0.4).astype(int)
    targets[:, 0] = 1
    targets[:, 1] = 0
    targets[:, 3] = np.where(targets[:, 3] == 1, -1, 0)  # only difficult and negative
    m = multilabel_metrics(scores, targets)
    ap = average_precision(scores, targets)
    assert np.isnan(ap[1]) and np.isnan(ap[3])
    assert m["labels_without_positives"] == [1, 3]
    assert m["ap_per_label"][1] is None and m["ap_per_label"][3] is None
    assert m["mAP"] == pytest.approx(100 * np.mean(ap[[0, 2]]))
    assert m["ap_per_label"][0] == pytest.approx(100.0)
    text = format_metrics(m, labels=["cat", "dog", "car", "bus"])
    assert "dog, bus" in text and "2 of 4" in text


def test_no_positive_anywhere_gives_no_map() -> None:
    m = multilabel_metrics(np.array([[0.2, 0.9]]), np.array([[0, 0]]))
    assert m["mAP"] is None
    assert m["labels_without_positives"] == [0, 1]
    assert "n/a" in format_metrics(m)


def test_threshold_metrics_hand_computed() -> None:
    scores = np.array(
        [
            [0.9, 0.6, 0.1],
            [0.4, 0.7, 0.8],
            [0.5, 0.2, 0.3],
        ]
    )
    targets = np.array(
        [
            [1, 0, -1],
            [1, 1, 0],
            [0, 1, 1],
        ]
    )
    m = multilabel_metrics(scores, targets)
    # Predictions (>= 0.5): label0 rows 0,2; label1 rows 0,1; label2 row 1.
    # label0: TP 1, pred 2, true 2; label1: TP 1, pred 2, true 2; label2: TP 0, pred 1, true 1.
    cp, cr = (0.5 + 0.5 + 0) / 3, (0.5 + 0.5 + 0) / 3
    op, orec = 2 / 5, 2 / 5
    assert m["CP"] == pytest.approx(100 * cp)
    assert m["CR"] == pytest.approx(100 * cr)
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert m["OP"] == pytest.approx(100 * op)
    assert m["OR"] == pytest.approx(100 * orec)
    assert m["OF1"] == pytest.approx(100 * 2 * op * orec / (op + orec))
    assert m["num_images"] == 3


def test_label_never_predicted_and_label_without_positives_count_as_zero() -> None:
    scores = np.array([[0.9, 0.1, 0.8], [0.8, 0.2, 0.1]])
    targets = np.array([[1, 1, 0], [1, 0, 0]])
    m = multilabel_metrics(scores, targets)
    # label0: P 1, R 1; label1: never predicted -> P 0, R 0; label2: no positive -> P 0, R 0.
    assert m["CP"] == pytest.approx(100 / 3)
    assert m["CR"] == pytest.approx(100 / 3)
    assert m["OP"] == pytest.approx(100 * 2 / 3)
    assert m["OR"] == pytest.approx(100 * 2 / 3)


@settings(max_examples=40, deadline=None)
@given(problems(ties=False, min_labels=2), st.sampled_from([0.3, 0.5, 0.7]))
def test_threshold_metrics_match_sklearn(problem: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    scores, targets = problem  # two or more labels, so scikit-learn sees a multilabel problem
    y_true = (targets == 1).astype(int)
    y_pred = (scores >= threshold).astype(int)
    m = multilabel_metrics(scores, targets, threshold=threshold)
    kw = {"zero_division": 0}
    assert m["OP"] == pytest.approx(100 * precision_score(y_true, y_pred, average="micro", **kw))
    assert m["OR"] == pytest.approx(100 * recall_score(y_true, y_pred, average="micro", **kw))
    assert m["CP"] == pytest.approx(100 * precision_score(y_true, y_pred, average="macro", **kw))
    assert m["CR"] == pytest.approx(100 * recall_score(y_true, y_pred, average="macro", **kw))


def test_macro_equals_class_average_when_every_label_has_predictions() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random((200, 5))
    targets = (rng.random((200, 5)) < 0.5).astype(int)
    y_pred = (scores >= 0.5).astype(int)
    assert y_pred.sum(axis=0).min() > 0 and targets.sum(axis=0).min() > 0
    m = multilabel_metrics(scores, targets)
    assert m["CP"] == pytest.approx(100 * precision_score(targets, y_pred, average="macro"))
    assert m["CR"] == pytest.approx(100 * recall_score(targets, y_pred, average="macro"))


def test_top3_needs_rank_and_threshold() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.1],  # 0.6 passes the threshold but is 4th: not predicted
            [0.4, 0.3, 0.2, 0.1, 0.45],  # in the top 3 but under 0.5: nothing predicted
        ]
    )
    targets = np.array([[1, 0, 0, 1, 0], [1, 0, 0, 0, 0]])
    m = multilabel_metrics(scores, targets)
    # Top-3 predictions: row 0 labels 0,1,2; row 1 none. TP 1 of 3 predicted, 3 positives.
    assert m["OP_top3"] == pytest.approx(100 / 3)
    assert m["OR_top3"] == pytest.approx(100 / 3)
    # label0: P 1, R 1/2; labels 1 and 2: P 0; label3: R 0 (positive missed); label4: nothing.
    assert m["CP_top3"] == pytest.approx(100 * 1 / 5)
    assert m["CR_top3"] == pytest.approx(100 * 0.5 / 5)
    # At the plain threshold label3 (0.6) is predicted too.
    assert m["OP"] == pytest.approx(100 * 2 / 4)


def test_top_k_keys_follow_k_and_cover_all_labels_when_k_is_large() -> None:
    scores = np.array([[0.9, 0.6]])
    targets = np.array([[1, 1]])
    m = multilabel_metrics(scores, targets, top_k=5)
    assert m["OR_top5"] == pytest.approx(100.0)
    assert "OR_top3" not in m


def test_sigmoid_is_the_logistic_function_without_overflow() -> None:
    """The one sigmoid engine code reuses: the textbook formula where it is finite, 0 and 1 at the extremes."""
    x = np.array([-800.0, -30.0, -1.5, 0.0, 2.0, 40.0, 800.0])
    with np.errstate(over="raise", invalid="raise"):
        p = sigmoid(x)
    np.testing.assert_allclose(p[1:-1], 1 / (1 + np.exp(-x[1:-1])), rtol=1e-14)
    assert (p[0], p[3], p[-1]) == (0.0, 0.5, 1.0)


def test_logits_are_passed_through_sigmoid() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((30, 4)) * 3
    targets = (rng.random((30, 4)) < 0.5).astype(int)
    from_logits = multilabel_metrics(logits, targets, scores_are_logits=True)
    from_probs = multilabel_metrics(1 / (1 + np.exp(-logits)), targets)
    for key in ("mAP", *SIX, "OF1_top3", "lrap", "coverage_error", "ranking_loss"):
        assert from_logits[key] == pytest.approx(from_probs[key])
    big = multilabel_metrics(np.array([[1e4, -1e4]]), np.array([[1, 0]]), scores_are_logits=True)
    assert big["OP"] == pytest.approx(100.0)


@settings(max_examples=60, deadline=None)
@given(st.booleans().flatmap(lambda ties: problems(ties, min_labels=2)))
def test_ranking_metrics_match_sklearn(problem: tuple[np.ndarray, np.ndarray]) -> None:
    scores, targets = problem
    y = (targets == 1).astype(int)
    m = multilabel_metrics(scores, targets)
    assert m["lrap"] == pytest.approx(label_ranking_average_precision_score(y, scores))
    assert m["coverage_error"] == pytest.approx(coverage_error(y, scores))
    assert m["ranking_loss"] == pytest.approx(label_ranking_loss(y, scores))


def test_one_image() -> None:
    m = multilabel_metrics(np.array([[0.9, 0.2, 0.6]]), np.array([[1, 0, 0]]))
    assert m["num_images"] == 1
    assert m["mAP"] == pytest.approx(100.0)
    assert m["labels_without_positives"] == [1, 2]
    assert m["lrap"] == pytest.approx(1.0)
    assert m["coverage_error"] == pytest.approx(1.0)


def test_all_scores_equal() -> None:
    scores = np.full((6, 3), 0.5)
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1], [0, 0, 1]])
    ap = average_precision(scores, targets)
    np.testing.assert_allclose(ap, targets.mean(axis=0))  # one threshold: AP = prevalence
    m = multilabel_metrics(scores, targets)
    y = targets == 1
    assert m["lrap"] == pytest.approx(label_ranking_average_precision_score(y, scores))
    assert m["ranking_loss"] == pytest.approx(label_ranking_loss(y, scores))
    assert m["coverage_error"] == pytest.approx(coverage_error(y, scores))


def test_nan_scores_are_rejected() -> None:
    scores = np.array([[0.1, np.nan], [0.3, 0.4]])
    with pytest.raises(ValueError, match="NaN in 1 of 2 images"):
        multilabel_metrics(scores, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(scores, np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.zeros((2, 3)), np.zeros((3, 2)), "does not match"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "at least one image"),
        (np.zeros((2, 2)), np.array([[2, 0], [0, 1]]), "only 1"),
    ],
)
def test_bad_inputs_are_rejected(scores: np.ndarray, targets: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        multilabel_metrics(scores, targets)


def _percent(**fractions: float) -> dict[str, float]:
    return {k: pytest.approx(100.0 * v, abs=1e-9) for k, v in fractions.items()}


def test_reference_grid_is_the_references_float32_values() -> None:
    # util.py builds x * 0.1 + -1 in float64 and compares float32 scores with it in float32
    assert [np.float32(t) for t in REFERENCE_GRID] == [np.float32(x * 0.1 + -1) for x in range(20)]
    assert REFERENCE_GRID[0] == -1.0 and REFERENCE_GRID[-1] == 0.9 and len(REFERENCE_GRID) == 20


def test_reference_tuned_metrics_by_hand() -> None:
    # label 0: positives at 0.7, 0.2, negatives at -0.3 twice; label 1: positives 0.35, 0.5, negatives
    # -0.5, 0.4; label 2: positive 0.05, negatives -2 twice and a difficult entry (a negative here) at 0.8
    logits = np.array([[0.7, -0.5, -2.0], [0.2, 0.35, -2.0], [-0.3, 0.5, 0.8], [-0.3, 0.4, 0.05]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, -1], [0, 0, 1]])
    # Nc / Np per label and CF1 + OF1 on the grid (Ng = 2, 2, 1):
    #   t <= -0.5:  2/4 2/4 1/2  CP 1/2,   CR 1, OP 5/10, OR 1 -> 2/3 + 2/3
    #   -0.4, -0.3: 2/4 2/3 1/2  CP 5/9,   CR 1, OP 5/9,  OR 1 -> 5/7 + 5/7
    #   -0.2 .. 0:  2/2 2/3 1/2  CP 13/18, CR 1, OP 5/7,  OR 1 -> 26/31 + 5/6 (the best; -0.2 is the first)
    #   0.1, 0.2:   2/2 2/3 0/1  CP 5/9, CR 2/3, OP 4/6, OR 4/5 -> 20/33 + 8/11, and lower above
    got = reference_tuned_metrics(logits, targets)
    assert got["threshold"] == -0.2
    assert got == {**got, **_percent(CP=13 / 18, CR=1, CF1=26 / 31, OP=5 / 7, OR=1, OF1=5 / 6)}


def test_reference_tuned_metrics_compare_in_float32() -> None:
    # 0.7 is above the grid's 0.7 = 0.7000000000000002 in float64 but equal to it in float32, where the
    # reference compares: the positive alone is predicted at 0.7 (a perfect score); at 0.6 both are.
    got = reference_tuned_metrics(np.array([[0.7], [0.65]]), np.array([[1], [0]]))
    assert got["threshold"] == 0.7
    assert got == {**got, **_percent(CP=1, CR=1, CF1=1, OP=1, OR=1, OF1=1)}


def test_reference_counts_one_prediction_for_a_label_never_predicted() -> None:
    # label 1's logits never reach the grid: util.py sets its prediction count to 1, so at -0.4..0.5
    # OP is 1 / (1 + 1), not 1 / 1; below -0.4 label 0 predicts all five images.
    logits = np.array([[0.5, -2.0], [-0.5, -2.0], [-0.5, -2.0], [-0.5, -2.0], [-0.5, -2.0]])
    targets = np.array([[1, 1], [0, 0], [0, 0], [0, 0], [0, 0]])
    got = reference_tuned_metrics(logits, targets)
    assert got["threshold"] == -0.4
    assert got == {**got, **_percent(CP=0.5, CR=0.5, CF1=0.5, OP=0.5, OR=0.5, OF1=0.5)}
    assert multilabel_metrics(logits, targets, scores_are_logits=True)["OP"] == pytest.approx(100.0)


def test_reference_reports_zero_when_a_label_has_no_positive() -> None:
    # recall 0/0 is NaN in util.py (no eps), so no threshold wins and all six stay 0
    got = reference_tuned_metrics(np.array([[1.0, 0.5], [-1.0, 0.2]]), np.array([[1, 0], [0, -1]]))
    assert got["threshold"] is None and got["threshold_top3"] is None
    assert all(got[k] == 0 and got[f"{k}_top3"] == 0 for k in SIX)


def test_reference_top3_keeps_every_label_when_that_scores_better() -> None:
    # top-3 scores: image 0 [1, -1, 1, 1], image 1 [-1, 1, 1, -1] (label 3 is among image 1's best three,
    # but its logit -0.2 is below 0)
    logits = np.array([[2.0, -0.5, 1.0, 0.3], [-3.0, 0.2, 0.1, -0.2]])
    targets = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    got = reference_tuned_metrics(logits, targets)
    # -1.0: every label of both images predicted: CP 1/2, CR 1, OP 4/8, OR 1 -> 2/3 + 2/3;
    # above it: Nc/Np 1/1 0/1 1/2 0/1, CP 3/8, CR 1/2, OP 2/5, OR 1/2 -> 3/7 + 4/9, lower
    assert got["threshold_top3"] == -1.0
    assert got == {**got, **_percent(CP_top3=0.5, CR_top3=1, CF1_top3=2 / 3, OP_top3=0.5, OR_top3=1, OF1_top3=2 / 3)}


def test_reference_top3_with_nonnegative_logits_when_that_scores_better() -> None:
    # top-3 scores: image 0 [1, -1, -1, 1], image 1 [-1, 1, -1, 1]
    logits = np.array([[2.0, -1.5, -1.2, 0.5], [-2.0, 1.0, -0.1, 0.4]])
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    got = reference_tuned_metrics(logits, targets)
    # -1.0 gives 2/3 + 2/3 as above; -0.9 (and every higher value, equal): Nc/Np 1/1 1/1 0/1 1/2,
    # CP 5/8, CR 3/4, OP 3/5, OR 3/4 -> 15/22 + 2/3, better; the first of the equal thresholds is kept
    assert got["threshold_top3"] == -0.9
    assert got == {
        **got,
        **_percent(CP_top3=5 / 8, CR_top3=3 / 4, CF1_top3=15 / 22, OP_top3=3 / 5, OR_top3=3 / 4, OF1_top3=2 / 3),
    }


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 25), st.integers(1, 6), st.booleans())
def test_reference_tuned_metrics_match_a_loop_restatement(seed: int, n: int, c: int, coarse: bool) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (n, c))
    if coarse:  # logits on the grid itself and ties: the float32 comparison and the top-k ties matter
        logits = np.round(logits, 1)
    targets = rng.choice([1, 0, 0, -1], size=(n, c))
    got = reference_tuned_metrics(logits, targets)
    scores32 = torch.from_numpy(logits.astype(np.float32))
    for suffix, scores in (("", logits), ("_top3", reference_top_k_matrix(scores32, min(3, c)))):
        threshold, six = reference_tuned_search(scores, targets)
        assert got[f"threshold{suffix}"] == threshold
        for k in SIX:
            assert got[f"{k}{suffix}"] == pytest.approx(100.0 * six[k], abs=1e-9)


def test_reference_tuned_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        reference_tuned_metrics(np.array([[np.nan]]), np.array([[1]]))
    with pytest.raises(ValueError, match="top_k"):
        reference_tuned_metrics(np.zeros((2, 2)), np.ones((2, 2)), top_k=0)


def test_reference_order_ap_by_hand() -> None:
    # without ties: P@1 = 1, P@3 = 2/3 (difficult row skipped), as average_precision
    scores = np.array([[0.9], [0.8], [0.6], [0.7], [0.5]])
    targets = np.array([[1], [0], [-1], [1], [0]])
    assert reference_order_average_precision(scores, targets)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, targets)[0] == pytest.approx((1 + 2 / 3) / 2)
    # a positive tied with a negative: precision at its own position in torch.sort's order, where
    # scikit-learn's convention gives it the precision at the end of the tie (1/3)
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    targets = np.array([[0], [1], [0], [1]])
    order = torch.sort(torch.tensor([0.9, 0.5, 0.5, 0.1]), descending=True)[1].tolist()
    first = 1 / 2 if order.index(1) < order.index(2) else 1 / 3
    assert reference_order_average_precision(scores, targets)[0] == pytest.approx((first + 2 / 4) / 2)
    assert average_precision(scores, targets)[0] == pytest.approx((1 / 3 + 2 / 4) / 2)
    # no positive: no AP
    assert np.isnan(reference_order_average_precision(np.zeros((2, 1)), np.zeros((2, 1), int))[0])


def test_per_label_thresholds() -> None:
    probs = np.array([[0.9, 0.3, 0.2], [0.8, 0.35, 0.1], [0.2, 0.1, 0.3], [0.1, 0.05, 0.4]])
    targets = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    th = per_label_thresholds(probs, targets, grid=grid)
    # label0: F1 = 1 for thresholds in (0.2, 0.8]; nearest 0.5 is 0.5.
    # label1: F1 = 1 only for thresholds in (0.1, 0.3]; nearest 0.5 is 0.3. label2: no positives.
    np.testing.assert_allclose(th, [0.5, 0.3, 0.5])
    assert per_label_thresholds(probs, targets).shape == (3,)


def test_format_metrics_is_readable() -> None:
    rng = np.random.default_rng(5)
    m = multilabel_metrics(rng.random((10, 3)), (rng.random((10, 3)) < 0.5).astype(int))
    text = format_metrics(m)
    for word in ("mAP", "CP", "OF1", "top-3", "score >= 0.5", "ranking loss", "coverage error"):
        assert word in text
    assert not any(math.isnan(v) for v in (m["CF1"], m["OF1_top3"], m["lrap"]))


def test_subset_metrics_keep_some_positives_against_every_negative() -> None:
    """mAP, CF1 and OF1 over the kept positives and every negative, checked against scikit-learn on exactly those
    entries (scores on a coarse grid, so tie groups matter). Mutation that survived before: any error inside
    average_precision (e.g. each positive's precision at its own rank instead of its tie group's end), since
    the expected values were computed with average_precision and multilabel_metrics themselves."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    scores = np.round(rng.random((40, 4)), 1)  # few distinct values: many ties
    targets = (rng.random((40, 4)) < 0.4).astype(np.int8)
    targets[0] = 1  # every label has a positive
    keep = (targets == 1) & (np.arange(40)[:, None] < 20)  # the positives of the first 20 images only

    def by_sklearn(kept: np.ndarray) -> tuple[float, float, float]:
        counted = kept | (targets == 0)  # the other positives take no part at all
        aps, labels = [], np.flatnonzero(kept.any(axis=0))
        for j in labels:
            rows = counted[:, j]
            aps.append(average_precision_score(kept[rows, j], scores[rows, j]))
        truth, predicted = kept[:, labels], ((scores >= 0.5) & counted)[:, labels]
        cp = precision_score(truth, predicted, average="macro", zero_division=0)
        cr = recall_score(truth, predicted, average="macro", zero_division=0)
        of1 = f1_score(truth, predicted, average="micro", zero_division=0)
        return 100 * float(np.mean(aps)), 100 * 2 * cp * cr / (cp + cr), 100 * of1

    for kept in (targets == 1, keep):
        got, want = subset_metrics(scores, targets, kept), by_sklearn(kept)
        assert got["mAP"] == pytest.approx(want[0])
        assert got["CF1"] == pytest.approx(want[1])
        assert got["OF1"] == pytest.approx(want[2])
        assert got["positives"] == int(kept.sum())
        assert got["labels"] == 4
    none = subset_metrics(scores, targets, np.zeros_like(keep))
    assert none["mAP"] is None
    assert none["CF1"] is None
    assert none["positives"] == 0


def test_map_text_keeps_a_real_zero() -> None:
    """The epoch line printed `mAP or nan`, turning a real 0.0 into nan; None (no positive) is n/a."""
    assert map_text({"mAP": 0.0}) == "0.00"
    assert map_text({"mAP": 61.456}) == "61.46"
    assert map_text({"mAP": None}).startswith("n/a")
