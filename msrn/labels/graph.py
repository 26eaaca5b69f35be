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


def count_cooccurrence(targets: np.ndarray) -> Cooccurrence:
    """Count label pairs over a training target matrix (N x C, 1 = present; 0 and -1 absent; -2 unknown).

    With unknown entries, P(j | i) is estimated over the images where j is known: K[i, j] counts them.
    """
    targets = np.asarray(targets)
    t = (targets == POSITIVE).astype(np.float64)
    m = t.T @ t
    nums = np.diag(m).copy()
    np.fill_diagonal(m, 0.0)
    unknown = targets == UNKNOWN
    return Cooccurrence(m, nums, t.T @ (~unknown).astype(np.float64) if unknown.any() else None)


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
