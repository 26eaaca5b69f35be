"""Multi-label evaluation metrics of the paper's protocol (docs/design.md §8), in numpy (torch
only where the reference's figures depend on the order torch.sort and torch.topk give tied scores).

Conventions (all vectorised over images):
- scores: N x C floats (probabilities, or logits with scores_are_logits=True); NaN is rejected.
- targets: N x C in {1, 0, -1, -2} (msrn.targets): -1 marks a difficult (VOC) entry, -2 an unknown
  one (partial labels: nobody knows whether the label is present).
- Unknown entries are left out of everything: of the label's AP ranking, of every thresholded
  count (neither a prediction nor a truth, also in top-k, where each image's k highest scores are
  still picked among all its labels), and of the ranking metrics (each image ranks its known labels).
- AP: difficult entries are removed from that label's ranking. Tied scores form one threshold,
  exactly as scikit-learn's average_precision_score: a positive inside a tie group gets the
  precision at the end of the group. Without ties this is the mean over positives of the
  precision at the positive's rank. A label with no positive has no AP (NaN) and is left out of mAP.
  The reference (util.py) instead takes the precision at each position of torch.sort's order, so
  inside a tie group the order torch.sort happens to return decides; the two are identical without
  ties. reference_order_average_precision gives the reference's convention.
- CP/CR/CF1/OP/OR/OF1: difficult counts as negative. Per label, an undefined ratio 0/0 counts as 0:
  precision of a label never predicted is 0 (design doc), and recall of a label with no positive is
  0 too, so CP and CR average over the same C labels (scikit-learn's macro recall with
  zero_division=0 agrees). Such labels are listed in the output. The reference has no eps: its
  recall of a label without positives is 0/0 = NaN, which makes it report 0 for all six.
- Top-k: a label counts as predicted when it is among the image's k highest scores (ties broken by
  the lower label index) and its probability is >= threshold, as in ML-GCN.
- lrap, coverage_error, ranking_loss: scikit-learn's definitions on targets == 1 as the relevant labels.
- reference_tuned_metrics: the figures the reference's code prints, with the threshold chosen on the
  evaluated set itself; for comparison with its logs only, never as a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from msrn.targets import UNKNOWN, VALUES

_SIX = ("CP", "CR", "CF1", "OP", "OR", "OF1")
MAX_LISTED = 20  # label names a printed table lists (vocabularies run to thousands)


def _check_inputs(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values and return float64 scores and int8 targets."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D array (images x labels), got shape {scores.shape}")
    if targets.shape != scores.shape:
        raise ValueError(f"targets shape {targets.shape} does not match scores shape {scores.shape}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"need at least one image and one label, got shape {scores.shape}")
    if np.isnan(scores).any():
        bad = int(np.isnan(scores).any(axis=1).sum())
        raise ValueError(f"scores contain NaN in {bad} of {scores.shape[0]} images; cannot rank them")
    if not np.isin(targets, VALUES).all():
        raise ValueError("targets must contain only 1 (positive), 0 (negative), -1 (difficult) and -2 (unknown)")
    return scores, targets.astype(np.int8)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow warnings for large |x|)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with 0 where den is 0 (the 0/0 convention of the module docstring)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _f1(p: np.ndarray | float, r: np.ndarray | float) -> np.ndarray:
    """Harmonic mean 2pr/(p+r), 0 where p + r is 0."""
    p = np.asarray(p, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return _ratio(2 * p * r, p + r)


# entries per block of the per-label and per-image sorts: a handful of float64/int64 temporaries of this
# size (32 MiB each) bound the memory whatever the number of labels and images
BLOCK_ELEMENTS = 1 << 22


def _blocks(total: int, other: int) -> list[slice]:
    """Slices of range(total) with about BLOCK_ELEMENTS / other entries each (at least one)."""
    step = max(1, BLOCK_ELEMENTS // max(1, other))
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


def _tie_ends(s: np.ndarray, axis: int) -> np.ndarray:
    """For sorted s, the index of the last entry of each entry's run of equal values along axis."""
    s = np.moveaxis(s, axis, 0)
    n = s.shape[0]
    is_end = np.ones(s.shape, dtype=bool)
    is_end[:-1] = s[:-1] != s[1:]
    end = np.where(is_end, np.arange(n).reshape(-1, *([1] * (s.ndim - 1))), n)
    return np.moveaxis(np.minimum.accumulate(end[::-1], axis=0)[::-1], 0, axis)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-label non-interpolated AP in [0, 1] (NaN for labels without positives); see module docstring."""
    scores, targets = _check_inputs(scores, targets)
    # one row per label, contiguous, so each label's sort reads consecutive memory
    blocks = _blocks(scores.shape[1], scores.shape[0])
    return np.concatenate(
        [
            _average_precision(np.ascontiguousarray(scores[:, b].T), np.ascontiguousarray(targets[:, b].T))
            for b in blocks
        ]
    )


def _average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """average_precision on checked inputs given labels x images, all labels at once (the caller bounds the block)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    t = np.take_along_axis(targets, order, axis=1)
    pos = (t == 1).astype(np.float64)
    neg = (t == 0).astype(np.float64)  # difficult and unknown entries are neither: out of the ranking
    tp = np.cumsum(pos, axis=1)
    fp = np.cumsum(neg, axis=1)
    # Each entry takes the counts at the last entry of its tie group (one threshold per distinct score).
    end = _tie_ends(s, 1)
    tp_end = np.take_along_axis(tp, end, axis=1)
    fp_end = np.take_along_axis(fp, end, axis=1)
    precision = _ratio(tp_end, tp_end + fp_end)
    n_pos = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * pos).sum(axis=1) / n_pos
    return np.where(n_pos > 0, ap, np.nan)


def _six(predicted: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 in percent from boolean prediction and ground-truth matrices."""
    tp = (predicted & positive).sum(axis=0)
    n_pred = predicted.sum(axis=0)
    n_true = positive.sum(axis=0)
    cp = float(_ratio(tp, n_pred).mean())
    cr = float(_ratio(tp, n_true).mean())
    op = float(_ratio(tp.sum(), n_pred.sum()))
    orec = float(_ratio(tp.sum(), n_true.sum()))
    values = (cp, cr, float(_f1(cp, cr)), op, orec, float(_f1(op, orec)))
    return {name: 100.0 * v for name, v in zip(_SIX, values)}


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean N x C mask of each image's k highest scores (ties: lower label index first)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def _ranking_metrics(scores: np.ndarray, relevant: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """scikit-learn's label_ranking_average_precision_score, coverage_error and label_ranking_loss,
    each image ranking only its known labels (images in blocks, each sorted once)."""
    n = scores.shape[0]
    lrap, coverage, loss = np.empty(n), np.empty(n), np.empty(n)
    for b in _blocks(n, scores.shape[1]):
        lrap[b], coverage[b], loss[b] = _ranking_block(scores[b], relevant[b], known[b])
    return {"lrap": float(lrap.mean()), "coverage_error": float(coverage.mean()), "ranking_loss": float(loss.mean())}


def _ranking_block(
    scores: np.ndarray, relevant: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image LRAP, coverage and ranking loss, from each image's labels sorted by score (descending)."""
    n, c = scores.shape
    n_rel = relevant.sum(axis=1)
    n_known = known.sum(axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    rel = np.take_along_axis(relevant, order, axis=1)
    kn = np.take_along_axis(known, order, axis=1)
    end = _tie_ends(s, 1)  # a label's score is >= that of every label up to the end of its tie group
    start = np.ones(s.shape, dtype=bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    start = np.maximum.accumulate(np.where(start, np.arange(c)[None, :], 0), axis=1)  # first of the tie group
    cum_known, cum_rel = np.cumsum(kn, axis=1), np.cumsum(rel, axis=1)
    rank = np.take_along_axis(cum_known, end, axis=1)  # known labels scored >= this one
    rank_rel = np.take_along_axis(cum_rel, end, axis=1)  # relevant labels scored >= this one
    rel_above = np.where(start > 0, np.take_along_axis(cum_rel, np.maximum(start - 1, 0), axis=1), 0)
    # (relevant, irrelevant) pairs with the irrelevant scored >= the relevant: per irrelevant known label,
    # the relevant ones scored <= it
    wrong_pairs = np.where(~rel & kn, n_rel[:, None] - rel_above, 0).sum(axis=1)
    degenerate = (n_rel == 0) | (n_rel == n_known)  # scikit-learn: ranking is meaningless, counts as perfect
    lrap = np.where(degenerate, 1.0, _ratio((_ratio(rank_rel, rank) * rel).sum(axis=1), n_rel))
    min_rel = np.where(relevant, scores, np.inf).min(axis=1, keepdims=True)
    coverage = np.where(n_rel > 0, ((scores >= min_rel) & known).sum(axis=1), 0)
    loss = np.where(degenerate, 0.0, _ratio(wrong_pairs, n_rel * (n_known - n_rel)))
    return lrap, coverage, loss


def _probabilities(scores: np.ndarray, scores_are_logits: bool) -> np.ndarray:
    """Sigmoid of logits, or the scores themselves when they are already probabilities."""
    return sigmoid(scores) if scores_are_logits else scores


def multilabel_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    threshold: float | np.ndarray = 0.5,
    top_k: int = 3,
    scores_are_logits: bool = False,
) -> dict:
    """All section-8 metrics for one evaluation (percentages except the three ranking metrics).

    `threshold` is one number or one per label (thresholds stored from a validation split).
    """
    scores, targets = _check_inputs(scores, targets)
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape[0] != scores.shape[1]):
        raise ValueError(f"threshold must be a number or one per label ({scores.shape[1]}), got {threshold.shape}")
    if not np.isfinite(threshold).all():
        raise ValueError(f"threshold must be finite, got {threshold}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    ap = average_precision(scores, targets)
    has_pos = ~np.isnan(ap)
    positive = targets == 1
    known = targets != UNKNOWN
    predicted = (_probabilities(scores, scores_are_logits) >= threshold) & known
    at_threshold = _six(predicted, positive)
    in_top = _six(predicted & _top_k_mask(scores, top_k), positive)
    result: dict = {"mAP": float(100.0 * ap[has_pos].mean()) if has_pos.any() else None}
    result.update(at_threshold)
    result.update({f"{name}_top{top_k}": value for name, value in in_top.items()})
    result["ap_per_label"] = [float(100.0 * v) if ok else None for v, ok in zip(ap, has_pos)]
    result["labels_without_positives"] = [int(i) for i in np.flatnonzero(~has_pos)]
    result.update(_ranking_metrics(scores, positive, known))
    result["num_images"] = int(scores.shape[0])
    result["threshold"] = float(threshold) if threshold.ndim == 0 else threshold.tolist()
    result["top_k"] = int(top_k)
    return result


def subset_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    keep: np.ndarray,
    threshold: float = 0.5,
    scores_are_logits: bool = False,
) -> dict:
    """mAP, CF1 and OF1 over the positives `keep` marks (N x C bool) against every negative: one object-size
    bucket, say. Other positives take no part (not ranked, not hits, not misses); labels without a kept
    positive are left out."""
    scores, targets = _check_inputs(scores, targets)
    keep = np.asarray(keep, dtype=bool) & (targets == 1)
    counted = keep | (targets == 0)
    ap = average_precision(scores, np.where(counted, targets, -1))
    has = keep.any(axis=0)
    out: dict[str, float | int | None] = {
        "mAP": None,
        "CF1": None,
        "OF1": None,
        "positives": int(keep.sum()),
        "labels": int(has.sum()),
    }
    if has.any():
        predicted = (_probabilities(scores, scores_are_logits) >= threshold) & counted
        six = _six(predicted[:, has], keep[:, has])
        out.update(mAP=float(100.0 * ap[has].mean()), CF1=six["CF1"], OF1=six["OF1"])
    return out


def _default_grid() -> np.ndarray:
    """Thresholds 0.01, 0.02, ..., 0.99 on the probability scale."""
    return np.round(np.arange(1, 100) / 100.0, 2)


def per_label_thresholds(probs: np.ndarray, targets: np.ndarray, grid: Sequence[float] | None = None) -> np.ndarray:
    """Per-label threshold maximising that label's F1 on a validation split; 0.5 where it cannot be chosen."""
    probs, targets = _check_inputs(probs, targets)
    grid_arr = _default_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    positive = targets == 1
    known = targets != UNKNOWN
    n_true = positive.sum(axis=0)
    f1 = np.empty((grid_arr.size, probs.shape[1]))
    for i, t in enumerate(grid_arr):  # one pass per threshold keeps memory at O(N C)
        predicted = (probs >= t) & known
        tp = (predicted & positive).sum(axis=0)
        f1[i] = _ratio(2 * tp, predicted.sum(axis=0) + n_true)
    # Among equally good thresholds take the one nearest 0.5, the fixed protocol threshold.
    best = f1 >= f1.max(axis=0, keepdims=True) - 1e-12
    distance = np.where(best, np.abs(grid_arr - 0.5)[:, None], np.inf)
    chosen = grid_arr[np.argmin(distance, axis=0)]
    usable = (n_true > 0) & (f1.max(axis=0) > 0)
    return np.where(usable, chosen, 0.5)


# The reference's grid on raw logits, -1.0, -0.9, ..., 0.9. It computes x * 0.1 - 1 in float64 and
# compares its float32 scores with it in float32, where those values equal these rounded ones.
REFERENCE_GRID: tuple[float, ...] = tuple(round(-1.0 + 0.1 * i, 1) for i in range(20))


def _reference_six(
    scores: np.ndarray, positive: np.ndarray, known: np.ndarray
) -> tuple[float | None, dict[str, float]]:
    """util.py's evaluation: the first grid threshold with the largest CF1 + OF1 (fractions).

    As there: a label never predicted counts 1 prediction in CP's and OP's denominators, no eps
    anywhere, and a threshold whose CF1 + OF1 is NaN (0/0) or 0 never wins, leaving (None, zeros).
    Unknown entries (partial labels, which the reference has not) are never counted as predicted.
    """
    c = scores.shape[1]
    n_true = positive.sum(axis=0).astype(np.float64)
    best_t, best, best_total = None, dict.fromkeys(_SIX, 0.0), 0.0
    for t in REFERENCE_GRID:
        predicted = (scores >= np.float32(t)) & known
        n_correct = (predicted & positive).sum(axis=0).astype(np.float64)
        n_pred = predicted.sum(axis=0).astype(np.float64)
        n_pred[n_pred == 0] = 1
        with np.errstate(divide="ignore", invalid="ignore"):
            op = n_correct.sum() / n_pred.sum()
            orec = n_correct.sum() / n_true.sum()
            of1 = 2 * op * orec / (op + orec)
            cp = np.sum(n_correct / n_pred) / c
            cr = np.sum(n_correct / n_true) / c
            cf1 = 2 * cp * cr / (cp + cr)
        if cf1 + of1 > best_total:  # strict: among equal sums the lowest threshold stays
            best_t, best_total = t, cf1 + of1
            best = {"CP": cp, "CR": cr, "CF1": cf1, "OP": op, "OR": orec, "OF1": of1}
    return best_t, {name: float(v) for name, v in best.items()}


def _reference_top_k_scores(logits: torch.Tensor, k: int) -> np.ndarray:
    """util.py's top-k scores: 1 where a label is among the image's k best (torch.topk) with logit >= 0, else -1."""
    index = logits.topk(min(k, logits.shape[1]), 1, True, True)[1].numpy()
    values = logits.numpy()
    out = np.full(values.shape, -1.0, dtype=np.float32)
    np.put_along_axis(out, index, np.where(np.take_along_axis(values, index, axis=1) >= 0, 1.0, -1.0), axis=1)
    return out


def reference_tuned_metrics(logits: np.ndarray, targets: np.ndarray, top_k: int = 3) -> dict:
    """CP..OF1 as the reference's code reports them: threshold on the raw logits tuned on this very set.

    The grid is REFERENCE_GRID on float32 logits; difficult counts as negative. Top-k: the same
    search on util.py's top-k scores, where -1.0 predicts every label and any higher threshold keeps
    the top-k labels (all of them when there are fewer) with logit >= 0, so the better of the two is
    kept. Percent, like multilabel_metrics; a threshold of None means no grid value gave CF1 + OF1
    above 0 (the reference then reports 0, for instance when a label has no positive).
    """
    scores, targets = _check_inputs(logits, targets)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    scores32 = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))  # the reference's meter is float32
    positive, known = targets == 1, targets != UNKNOWN
    threshold, six = _reference_six(scores32.numpy(), positive, known)
    threshold_k, six_k = _reference_six(_reference_top_k_scores(scores32, top_k), positive, known)
    result: dict = {"threshold": threshold, **{name: 100.0 * v for name, v in six.items()}}
    result[f"threshold_top{top_k}"] = threshold_k
    result.update({f"{name}_top{top_k}": 100.0 * v for name, v in six_k.items()})
    result["top_k"] = int(top_k)
    return result


def reference_order_average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-label AP in [0, 1] with the reference's tie convention: precision at each position of
    torch.sort's descending order of the float32 scores (difficult entries skipped; NaN without positives)."""
    scores, targets = _check_inputs(scores, targets)
    columns = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    ap = np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):  # column by column, as the reference sorts them
        order = torch.sort(columns[:, j], dim=0, descending=True)[1].numpy()
        t = targets[order, j]
        t = t[t != -1]
        if (t == 1).any():
            hits = np.cumsum(t == 1)
            ap[j] = float(np.mean(hits[t == 1] / (np.flatnonzero(t == 1) + 1.0)))
    return ap


def map_text(m: dict) -> str:
    """mAP as printed: two decimals, or n/a when no label has a positive (None; a real 0.0 prints as 0.00)."""
    return "n/a (no label has a positive)" if m.get("mAP") is None else f"{m['mAP']:.2f}"


def format_metrics(m: dict, labels: list[str] | None = None) -> str:
    """A readable multi-line table of a multilabel_metrics result."""
    top_k = m.get("top_k", 3)
    threshold = m.get("threshold", 0.5)
    row_name = f"score >= {threshold:g}" if np.ndim(threshold) == 0 else "per-label thr."
    ap = m.get("ap_per_label", [])
    missing = m.get("labels_without_positives", [])
    lines = [
        f"images: {m['num_images']}",
        f"mAP: {map_text(m)}  (over {len(ap) - len(missing)} of {len(ap)} labels)",
        "",
        f"{'':<18}" + "".join(f"{name:>8}" for name in _SIX),
        f"{row_name:<18}" + "".join(f"{m[name]:>8.2f}" for name in _SIX),
        f"{f'top-{top_k}':<18}" + "".join(f"{m[f'{name}_top{top_k}']:>8.2f}" for name in _SIX),
        "",
        f"label ranking average precision: {m['lrap']:.4f}",
        f"coverage error:                  {m['coverage_error']:.4f}",
        f"ranking loss:                    {m['ranking_loss']:.4f}",
    ]
    if missing:
        names = [labels[i] if labels is not None else str(i) for i in missing[:MAX_LISTED]]
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        lines.append("")
        lines.append(
            f"labels without positives (no AP, left out of mAP; recall counted as 0): {', '.join(names)}{more}"
        )
    return "\n".join(lines)
