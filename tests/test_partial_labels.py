"""Partial labels: the CSV `unknown` column, and unknown entries left out of metrics, graph and reports."""

from __future__ import annotations

import json
from pathlib import Path

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

from msrn.cli import main as cli
from msrn.data import build_dataset
from msrn.errors import MSRNError
from msrn.labels.graph import conditional, count_cooccurrence
from msrn.labels.labelset import LabelSet, build_label_set
from msrn.metrics import average_precision, multilabel_metrics, per_label_thresholds, reference_tuned_metrics
from msrn.targets import UNKNOWN

SIX = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def write_csv(folder: Path, text: str) -> Path:
    path = folder / "data.csv"
    path.write_text(text)
    return path


def test_csv_unknown_column(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path, "image,labels,split,unknown\na.jpg,cat|dog,train,\nb.jpg,cat,train,dog|owl\nc.jpg,,test,cat\n"
    )
    train = build_dataset("csv", csv, "train")
    assert train.labels == ["cat", "dog", "owl"]  # a label seen only as unknown is still a column
    np.testing.assert_array_equal(train.targets, [[1, 1, 0], [1, UNKNOWN, UNKNOWN]])
    assert train.unknown_counts() == {"cat": 0, "dog": 1, "owl": 1}
    assert build_dataset("csv", csv, "test").targets.tolist() == [[UNKNOWN, 0, 0]]


@pytest.mark.parametrize(
    "body,message",
    [
        ("image,labels,split,unknown\na.jpg,cat,train,cat\n", "data.csv:2: label 'cat' is both present and unknown"),
        ("image,labels,split,unknown\na.jpg,cat,train\n", "data.csv:2: expected 4 columns"),
        ("image,labels,split\na.jpg,cat,train,dog\n", "data.csv:2: expected 3 columns"),
        ("image,labels,split,maybe\na.jpg,cat,train,dog\n", "image,labels,split,unknown"),
    ],
)
def test_csv_unknown_column_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(MSRNError, match=message):
        build_dataset("csv", write_csv(tmp_path, body), "train")


# --------------------------------------------------------------------------- metrics


@st.composite
def partial_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random scores and targets with every code: 1, 0, -1 (difficult) and -2 (unknown)."""
    n = draw(st.integers(2, 25))
    c = draw(st.integers(2, 6))
    scores = draw(arrays(np.float64, (n, c), elements=st.floats(0, 1, allow_nan=False, width=64), unique=True))
    targets = draw(arrays(np.int8, (n, c), elements=st.sampled_from([1, 1, 0, 0, 0, -1, -2, -2])))
    return scores, targets


def _score_or_zero(metric, truth: np.ndarray, predicted: np.ndarray) -> float:
    """A scikit-learn precision or recall; 0 for no entries at all (msrn.metrics' 0/0 convention)."""
    return metric(truth, predicted, zero_division=0) if truth.size else 0.0


def _sklearn_on_known(scores: np.ndarray, targets: np.ndarray, threshold: float, k: int) -> dict:
    """Every metric computed by scikit-learn on the known entries only (difficult: out of AP, negative else)."""
    known, positive = targets != UNKNOWN, targets == 1
    c = scores.shape[1]
    out: dict = {"ap": []}
    for j in range(c):
        keep = known[:, j] & (targets[:, j] != -1)
        y = positive[keep, j]
        out["ap"].append(100 * average_precision_score(y, scores[keep, j]) if y.any() else None)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.zeros_like(known)
    np.put_along_axis(top, order, True, axis=1)
    for suffix, predicted in (("", scores >= threshold), (f"_top{k}", (scores >= threshold) & top)):
        per_label = [(positive[known[:, j], j], predicted[known[:, j], j]) for j in range(c)]
        out["CP" + suffix] = 100 * np.mean([_score_or_zero(precision_score, y, p) for y, p in per_label])
        out["CR" + suffix] = 100 * np.mean([_score_or_zero(recall_score, y, p) for y, p in per_label])
        out["OP" + suffix] = 100 * _score_or_zero(precision_score, positive[known], predicted[known])
        out["OR" + suffix] = 100 * _score_or_zero(recall_score, positive[known], predicted[known])
    rows = [(scores[i, known[i]][None], positive[i, known[i]][None]) for i in range(len(scores))]
    # one image at a time over its known labels; scikit-learn takes no ranking of fewer than two labels
    out["lrap"] = np.mean([label_ranking_average_precision_score(y, s) if s.size > 1 else 1.0 for s, y in rows])
    out["coverage_error"] = np.mean([coverage_error(y, s) if s.size > 1 else float(y.sum()) for s, y in rows])
    out["ranking_loss"] = np.mean([label_ranking_loss(y, s) if s.size > 1 else 0.0 for s, y in rows])
    return out


@settings(max_examples=40, deadline=None)
@given(partial_problems(), st.sampled_from([0.3, 0.5, 0.7]))
def test_metrics_with_unknown_entries_match_sklearn_on_the_known_subset(
    problem: tuple[np.ndarray, np.ndarray], threshold: float
) -> None:
    scores, targets = problem
    ours = multilabel_metrics(scores, targets, threshold=threshold, top_k=2)
    theirs = _sklearn_on_known(scores, targets, threshold, 2)
    assert [a is None for a in ours["ap_per_label"]] == [b is None for b in theirs["ap"]]
    np.testing.assert_allclose(
        [a for a in ours["ap_per_label"] if a is not None], [b for b in theirs["ap"] if b is not None], atol=1e-9
    )
    for key in (
        "CP",
        "CR",
        "OP",
        "OR",
        "CP_top2",
        "CR_top2",
        "OP_top2",
        "OR_top2",
        "lrap",
        "coverage_error",
        "ranking_loss",
    ):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_ap_leaves_unknown_entries_out_of_the_ranking() -> None:
    """By hand: the known entries rank +, +, -, + (the unknown 0.8 takes no place), so the precisions at the
    positives are 1, 1 and 3/4. Mutation: unknown entries ranked as negatives in average_precision; only the
    hypothesis test above caught it, after minutes of shrinking."""
    scores = np.array([[0.9], [0.8], [0.7], [0.4], [0.2]])
    targets = np.array([[1], [UNKNOWN], [1], [0], [1]])
    assert average_precision(scores, targets)[0] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_unknown_is_not_a_false_positive_but_difficult_is() -> None:
    scores = np.array([[0.9, 0.2], [0.8, 0.1], [0.1, 0.9]])
    base = np.array([[1, 0], [0, 0], [0, 1]])
    unknown, difficult = base.copy(), base.copy()
    unknown[1, 0], difficult[1, 0] = UNKNOWN, -1
    assert multilabel_metrics(scores, unknown)["CP"] == 100.0  # the second image's 0.8 is not counted
    assert multilabel_metrics(scores, difficult)["CP"] == 75.0  # a difficult one predicted is a false positive
    assert multilabel_metrics(scores, base)["CP"] == 75.0


def test_thresholds_ignore_unknown_entries() -> None:
    probs = np.array([[0.9], [0.8], [0.7], [0.6], [0.3], [0.1]])
    targets = np.array([[1], [UNKNOWN], [UNKNOWN], [UNKNOWN], [1], [0]])
    as_negative = np.where(targets == UNKNOWN, 0, targets)
    assert per_label_thresholds(probs, targets)[0] == 0.3  # the unknown 0.6-0.8 are no false positives
    assert per_label_thresholds(probs, as_negative)[0] == 0.81  # as negatives they would be
    logits = np.array([[2.0], [1.5], [1.0], [0.5], [-0.8], [-2.0]])  # the reference's grid is on logits
    assert reference_tuned_metrics(logits, targets)["CF1"] == 100.0  # at -0.8, only known entries counted
    assert reference_tuned_metrics(logits, as_negative)["CF1"] < 100.0


# --------------------------------------------------------------------------- graph, label set, commands


def test_cooccurrence_is_estimated_over_known_entries() -> None:
    # a, b columns: P(b | a) over the images where b is known: 1 of 2, not 1 of 4
    targets = np.array([[1, 1], [1, 0], [1, UNKNOWN], [1, UNKNOWN], [0, 1]])
    co = count_cooccurrence(targets)
    assert co.counts[0, 1] == 1 and co.nums.tolist() == [4, 2]
    assert conditional(co)[0, 1] == pytest.approx(0.5)
    assert conditional(co)[1, 0] == pytest.approx(0.5)
    full = count_cooccurrence(np.where(targets == UNKNOWN, 0, targets))
    assert full.known is None and conditional(full)[0, 1] == pytest.approx(0.25)


def test_label_set_keeps_the_known_counts(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "image,labels,split,unknown\na.jpg,a|b,train,\nb.jpg,a,train,b\nc.jpg,b,train,a\n")
    ls = build_label_set(build_dataset("csv", csv, "train"))
    ls.save(tmp_path / "labels.pt")
    back = LabelSet.load(tmp_path / "labels.pt")
    np.testing.assert_array_equal(back.cooccurrence.known, ls.cooccurrence.known)
    np.testing.assert_array_equal(back.adjacency(), ls.adjacency())
    assert back.conditional()[0, 1] == 1.0  # b is known in one image with a, and present there


def test_inspect_and_labels_report_unknown_entries(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = write_csv(tmp_path, "image,labels,split,unknown\na.jpg,a|b,train,\nb.jpg,a,train,b\nc.jpg,b,train,a|c\n")
    assert cli(["inspect", "--dataset", "csv", "--data", str(csv), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["unknown_counts"] == {"a": 1, "b": 1, "c": 1}
    assert cli(["inspect", "--dataset", "csv", "--data", str(csv)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[-1] == "unknown" and table[2].split() == ["a", "2", "66.7%", "1"]
    assert cli(["labels", "--dataset", "csv", "--data", str(csv), "--out", str(tmp_path / "l.pt")]) == 0
    out = capsys.readouterr().out
    assert "counted over known entries only" in out and "3 unknown entries" in out
    assert "known entries only" in (tmp_path / "labels_report.md").read_text()
