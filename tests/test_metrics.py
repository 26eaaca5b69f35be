"""Tests for msrn.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import (
    average_precision_score,
    coverage_error,
    label_ranking_average_precision_score,
    label_ranking_loss,
    precision_score,
    recall_score,
)

from msrn.metrics import (
    average_precision,
    format_metrics,
    multilabel_metrics,
    per_label_thresholds,
    subset_metrics,
    tune_thresholds,
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


def test_tune_thresholds_maximises_cf1_plus_of1() -> None:
    rng = np.random.default_rng(4)
    targets = (rng.random((100, 4)) < 0.3).astype(int)
    scores = np.clip(0.35 * targets + 0.5 * rng.random((100, 4)), 0, 1)
    grid = [0.2, 0.3, 0.4, 0.5, 0.6]
    tuned = tune_thresholds(scores, targets, grid=grid)
    assert tuned["tuned"] is True and "tuned on the evaluated set" in tuned["note"]
    totals = {}
    for t in grid:
        m = multilabel_metrics(scores, targets, threshold=t)
        totals[t] = m["CF1"] + m["OF1"]
    assert tuned["threshold"] == max(totals, key=totals.get)
    assert tuned["CF1"] + tuned["OF1"] == pytest.approx(max(totals.values()))


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
    rng = np.random.default_rng(3)
    scores = rng.random((40, 4))
    targets = (rng.random((40, 4)) < 0.4).astype(np.int8)
    targets[0] = 1  # every label has a positive
    whole, full = subset_metrics(scores, targets, targets == 1), multilabel_metrics(scores, targets)
    for key in ("mAP", "CF1", "OF1"):
        assert whole[key] == pytest.approx(full[key])
    keep = (targets == 1) & (np.arange(40)[:, None] < 20)  # the positives of the first 20 images only
    part = subset_metrics(scores, targets, keep)
    masked = np.where((targets == 1) & ~keep, -1, targets)  # the others leave the ranking, as difficult ones do
    assert part["mAP"] == pytest.approx(100 * np.nanmean(average_precision(scores, masked)))
    predicted = (scores >= 0.5) & ((targets == 0) | keep)
    tp, n_pred, n_true = (predicted & keep).sum(), predicted.sum(), keep.sum()
    op, orec = tp / n_pred, tp / n_true
    assert part["OF1"] == pytest.approx(100 * 2 * op * orec / (op + orec))  # dropped positives are no misses
    assert part["positives"] == int(keep.sum()) and part["labels"] == 4
    none = subset_metrics(scores, targets, np.zeros_like(keep))
    assert none["mAP"] is None and none["CF1"] is None and none["positives"] == 0
