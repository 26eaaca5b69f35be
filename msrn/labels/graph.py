"""The label graph of docs/design.md §2: co-occurrence counts -> thresholded, re-weighted adjacency.

Counts always come from the training split. The reference's `{'adj', 'nums'}` pickles are
read as they are (steps 1-4 applied literally), which is what reproduces its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msrn.errors import MSRNError
from msrn.safe_pickle import load_numpy_pickle
from msrn.targets import POSITIVE, UNKNOWN

TAU = 0.4
REWEIGHT = 0.25


@dataclass
class Cooccurrence:
    """M[i, j] = images holding both i and j; n[i] = images holding i; with partial labels, K[i, j] =
    images holding i where j's presence is known (None: every entry is known, K[i, j] = n[i])."""

    counts: np.ndarray  # C x C
    nums: np.ndarray  # C
    known: np.ndarray | None = None  # C x C

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.float64)
        self.nums = np.asarray(self.nums, dtype=np.float64).reshape(-1)
        c = self.nums.shape[0]
        if self.counts.shape != (c, c):
            raise MSRNError(f"co-occurrence counts have shape {self.counts.shape}, expected ({c}, {c})")
        if self.known is not None:
            self.known = np.asarray(self.known, dtype=np.float64)
            if self.known.shape != (c, c):
                raise MSRNError(f"known-entry counts have shape {self.known.shape}, expected ({c}, {c})")

    @property
    def num_classes(self) -> int:
        return int(self.nums.shape[0])


# label pairs counted one by one up to this many (a training split's positives are sparse: images hold a few
# labels each, so the pairs are few even with 5,000 labels); beyond it, a blocked dense product counts them
MAX_PAIRS = 1 << 25
DENSE_BLOCK = 4096  # images per block of the dense product


def _pair_counts(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """C x C counts [i, j] = images where first[:, i] and second[:, j] both hold (N x C boolean matrices).

    Pairs within each image are enumerated from the nonzero entries, so the cost follows the entries, not
    N x C x C; dense rows (many entries per image) fall back to a blocked matrix product.
    """
    n, c = first.shape
    rows_a, cols_a = np.nonzero(first)
    rows_b, cols_b = np.nonzero(second)
    per_b = np.bincount(rows_b, minlength=n)  # second's entries per image
    k = per_b[rows_a]  # pairs each of first's entries makes
    if int(k.sum()) > MAX_PAIRS:
        out = np.zeros((c, c), dtype=np.float64)
        for i in range(0, n, DENSE_BLOCK):  # float32 products are exact for block counts below 2^24
            out += first[i : i + DENSE_BLOCK].T.astype(np.float32) @ second[i : i + DENSE_BLOCK].astype(np.float32)
        return out
    start_b = np.cumsum(per_b) - per_b  # index of each image's first entry in second's list (row-major order)
    a = np.repeat(np.arange(rows_a.size), k)  # first's entry of each pair
    offset = np.arange(a.size) - np.repeat(np.cumsum(k) - k, k)  # the pair's place among its image's entries
    b = start_b[rows_a[a]] + offset  # second's entry of each pair
    return np.bincount(cols_a[a] * c + cols_b[b], minlength=c * c).reshape(c, c).astype(np.float64)


def count_cooccurrence(targets: np.ndarray) -> Cooccurrence:
    """Count label pairs over a training target matrix (N x C, 1 = present; 0 and -1 absent; -2 unknown).

    With unknown entries, P(j | i) is estimated over the images where j is known: K[i, j] counts them.
    """
    targets = np.asarray(targets)
    t = targets == POSITIVE
    m = _pair_counts(t, t)
    nums = np.diag(m).copy()
    np.fill_diagonal(m, 0.0)
    unknown = targets == UNKNOWN
    return Cooccurrence(m, nums, nums[:, None] - _pair_counts(t, unknown) if unknown.any() else None)


def reference_counts(obj: object, where: str) -> Cooccurrence:
    """The counts of the reference's `{'adj': M, 'nums': n}` dict; one line naming `where` for anything else."""
    if not isinstance(obj, dict) or "adj" not in obj or "nums" not in obj:
        raise MSRNError(f"{where}: expected a dict with keys 'adj' and 'nums' (the reference's adj pickle)")
    return Cooccurrence(np.asarray(obj["adj"]), np.asarray(obj["nums"]))


def read_cooccurrence(path: str | Path) -> Cooccurrence:
    """Read the reference's pickle `{'adj': M, 'nums': n}` (plain numpy data only)."""
    return reference_counts(load_numpy_pickle(path), str(path))


def conditional(co: Cooccurrence) -> np.ndarray:
    """P[i, j] = M[i, j] / n[i], the estimate of P(j | i) (M[i, j] / K[i, j] with partial labels); rows of
    labels never seen (n = 0), and pairs never known together, are 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = co.counts / (co.nums[:, None] if co.known is None else co.known)
    return np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)


def adjacency(co: Cooccurrence, tau: float = TAU, reweight: float = REWEIGHT) -> np.ndarray:
    """A_hat = D^-1/2 A^T D^-1/2 from counts (ML-GCN steps 1-4 of docs/design.md §2), float32 C x C.

    Labels never seen (n = 0) get no outgoing edges instead of the reference's NaN row.
    """
    a = (conditional(co) >= tau).astype(np.float64)
    a = a * reweight / (a.sum(0, keepdims=True) + 1e-6)
    a = a + np.eye(co.num_classes)
    d = np.power(a.sum(1), -0.5)
    a_hat = (a * d[None, :]).T * d[None, :]
    return a_hat.astype(np.float32)


def as_cooccurrence(src: str | Path | Cooccurrence | dict | tuple) -> Cooccurrence:
    """Counts given as a Cooccurrence, the reference's pickle file, its `{'adj','nums'}` dict or `(counts, nums)`."""
    if isinstance(src, Cooccurrence):
        return src
    if isinstance(src, (str, Path)):
        return read_cooccurrence(src)
    if isinstance(src, dict):
        return reference_counts(src, "co-occurrence dict")
    counts, nums = src
    return Cooccurrence(np.asarray(counts), np.asarray(nums))


def adjacency_from(
    src: str | Path | Cooccurrence | dict | tuple | None, num_classes: int, tau: float = TAU
) -> np.ndarray | None:
    """A_hat (default re-weighting) for `num_classes` labels from counts in any form `as_cooccurrence` takes;
    None for None (a model then gets no edges)."""
    if src is None:
        return None
    co = as_cooccurrence(src)
    if co.num_classes != num_classes:
        raise MSRNError(f"co-occurrence statistics have {co.num_classes} labels, the model {num_classes}")
    return adjacency(co, tau)


def edges(co: Cooccurrence, tau: float = TAU) -> list[tuple[int, int, float]]:
    """The directed edges i -> j with P(j | i) >= tau, as (i, j, P) sorted by P descending."""
    p = conditional(co)
    out = [(int(i), int(j), float(p[i, j])) for i, j in zip(*np.nonzero(p >= tau), strict=False) if i != j]
    return sorted(out, key=lambda e: -e[2])
