"""Bring your own labels: the label list, its co-occurrence graph and its label vectors, checked.

`build_label_set` counts co-occurrence on the TRAINING split only (docs/design.md §2), picks label
vectors from a source (hashed character n-grams by default, a GloVe/fastText text file, the
reference's pickles, or a sentence encoder) and returns a `LabelSet` that saves to a plain
tensor file. Its readable report and `msrn labels` are in `msrn.labels.report`; `msrn train`
calls `build_label_set` itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msrn.checkpoint import read_checkpoint
from msrn.data import MultiLabelData
from msrn.errors import MSRNError
from msrn.io import atomic_save_torch
from msrn.labels.encoder import DEFAULT_ENCODER, encode_labels
from msrn.labels.graph import (
    REWEIGHT,
    TAU,
    Cooccurrence,
    adjacency,
    conditional,
    count_cooccurrence,
    edges,
    read_cooccurrence,
)
from msrn.labels.reference_files import LABELS as REFERENCE_LABELS
from msrn.labels.reference_files import REFERENCE, check_label_order, resolve
from msrn.labels.vectors_ngram import NGRAM_DIM, ngram_vectors
from msrn.labels.wordvec import label_words, load_word_vectors, read_name_map

FORMAT = "msrn-labels"
VERSION = 1
COUNTED = "train"  # the co-occurrence source that counts the training split


@dataclass
class LabelSet:
    """Labels, their training co-occurrence counts and their vectors: everything the label graph needs."""

    labels: list[str]
    cooccurrence: Cooccurrence
    word_vectors: np.ndarray  # C x dim float32
    vector_source: str
    tau: float = TAU
    reweight: float = REWEIGHT
    num_images: int | None = None  # training images counted (None for a reference pickle)

    def __post_init__(self) -> None:
        """Check that labels, counts and vectors agree, so a mismatch fails here and not in the model."""
        self.labels = [str(x) for x in self.labels]
        c = len(self.labels)
        if c == 0:
            raise MSRNError("a label set needs at least one label")
        dupes = sorted(x for x, n in Counter(self.labels).items() if n > 1)
        if dupes:
            raise MSRNError(f"label names must be unique; repeated: {', '.join(dupes[:10])}")
        if self.cooccurrence.num_classes != c:
            raise MSRNError(f"co-occurrence statistics have {self.cooccurrence.num_classes} labels, expected {c}")
        self.word_vectors = np.asarray(self.word_vectors, dtype=np.float32)
        if self.word_vectors.ndim != 2 or self.word_vectors.shape[0] != c:
            raise MSRNError(f"label vectors have shape {self.word_vectors.shape}, expected ({c}, dim)")
        if not np.isfinite(self.word_vectors).all():
            raise MSRNError("label vectors hold non-finite values")
        self.tau, self.reweight = float(self.tau), float(self.reweight)
        if not 0.0 < self.tau <= 1.0:
            raise MSRNError(f"tau must lie in (0, 1], got {self.tau}")
        if not 0.0 <= self.reweight <= 1.0:
            raise MSRNError(f"the re-weighting p must lie in [0, 1], got {self.reweight}")

    @property
    def num_classes(self) -> int:
        """Number of labels C."""
        return len(self.labels)

    def adjacency(self) -> np.ndarray:
        """A_hat of docs/design.md §2 (C x C float32) for this set's counts, tau and re-weighting."""
        return adjacency(self.cooccurrence, self.tau, self.reweight)

    def conditional(self) -> np.ndarray:
        """P[i, j] = M[i, j] / n[i], the estimate of P(j | i); rows of unseen labels are 0."""
        return conditional(self.cooccurrence)

    def edges(self) -> list[tuple[int, int, float]]:
        """Directed edges i -> j with P(j | i) >= tau, strongest first."""
        return edges(self.cooccurrence, self.tau)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and strings only, so `torch.load(weights_only=True)` reads it back."""
        d = {
            "format": FORMAT, "version": VERSION, "labels": list(self.labels),
            "counts": torch.from_numpy(np.ascontiguousarray(self.cooccurrence.counts, dtype=np.float64)),
            "nums": torch.from_numpy(np.ascontiguousarray(self.cooccurrence.nums, dtype=np.float64)),
            "word_vectors": torch.from_numpy(np.ascontiguousarray(self.word_vectors)),
            "vector_source": self.vector_source, "tau": self.tau, "reweight": self.reweight,
            "num_images": self.num_images,
        }  # fmt: skip
        if self.cooccurrence.known is not None:  # partial labels: the denominators of P(j|i)
            d["known"] = torch.from_numpy(np.ascontiguousarray(self.cooccurrence.known, dtype=np.float64))
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "label set") -> LabelSet:
        """Rebuild a label set from `to_dict` output; a malformed dict gives one clear MSRNError."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MSRNError(f"{where} is not an msrn label set (made by `msrn labels`)")
        try:
            return cls(
                labels=list(d["labels"]),
                cooccurrence=Cooccurrence(
                    _as_array(d["counts"]),
                    _as_array(d["nums"]),
                    None if d.get("known") is None else _as_array(d["known"]),
                ),
                word_vectors=_as_array(d["word_vectors"]),
                vector_source=str(d["vector_source"]),
                tau=float(d["tau"]),
                reweight=float(d["reweight"]),
                num_images=None if d.get("num_images") is None else int(d["num_images"]),
            )
        except KeyError as e:
            raise MSRNError(f"{where} lacks {e.args[0]!r}; not a complete label set") from None
        except (TypeError, ValueError) as e:
            raise MSRNError(f"{where} is malformed: {type(e).__name__}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write the label set atomically with torch.save (tensors and plain values only)."""
        atomic_save_torch(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """Read a file written by `save`, with weights_only=True so it can never run code."""
        return cls.from_dict(read_checkpoint(path, "label set"), str(path))


def _as_array(x: Any) -> np.ndarray:
    """A numpy array from a tensor, array or nested list."""
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def _name_map(name_map: str | Path | dict[str, str] | None) -> dict[str, str] | None:
    """A label -> words mapping from a dict or a `label=words` file."""
    if name_map is None or isinstance(name_map, dict):
        return name_map
    path = Path(name_map)
    if not path.is_file():
        raise MSRNError(f"name-map file {path} does not exist")
    return read_name_map(path)


def label_vectors(
    labels: list[str],
    source: str | Path | np.ndarray | None = None,
    name_map: str | Path | dict[str, str] | None = None,
) -> tuple[np.ndarray, str]:
    """C x dim float32 label vectors and a description of where they came from.

    `source`: None or "ngram[:DIM]" (hashed n-grams), "encoder[:MODEL]" (sentence encoder), an
    array, or a file (.pkl reference pickle, .npy array, anything else a GloVe/fastText text file).
    The name map rewrites odd label names (e.g. `diningtable=dining table`) before the words are
    looked up; it does not apply to pickles and arrays, which are already in label order.
    """
    labels = list(labels)
    mapping = _name_map(name_map)
    if source is not None and not isinstance(source, (str, Path)):
        return load_word_vectors(source, labels), "array"
    spec = "ngram" if source is None else str(source)
    kind, _, arg = spec.partition(":") if not isinstance(source, Path) else ("file", "", "")
    if kind == "ngram":
        try:
            dim = int(arg) if arg else NGRAM_DIM
        except ValueError:
            raise MSRNError(f"--word-vectors {spec}: expected ngram:DIM with an integer DIM") from None
        vecs = ngram_vectors([label_words(x, mapping) for x in labels], labels, dim)
        return vecs, "ngram" if dim == NGRAM_DIM else f"ngram:{dim}"
    if kind == "encoder":
        model = arg or DEFAULT_ENCODER
        texts = [" ".join(label_words(x, mapping)) or x for x in labels]
        return encode_labels(texts, model), f"encoder:{model}"
    path = Path(spec)
    vecs = load_word_vectors(path, labels, mapping)
    kind = {".pkl": "pickle", ".npy": "npy"}.get(path.suffix, "text")
    return vecs, f"{kind}:{path}"


def build_label_set(
    train_data: MultiLabelData,
    vectors: str | Path | np.ndarray | None = None,
    name_map: str | Path | dict[str, str] | None = None,
    tau: float = TAU,
    reweight: float = REWEIGHT,
    cooccurrence: str | Path | Cooccurrence | None = None,
) -> LabelSet:
    """The label set of a training split (a MultiLabelData): counts from its targets, vectors from `vectors`.

    `cooccurrence` replaces the counting with the reference's `{'adj','nums'}` pickle (applied
    literally, to reproduce a reference checkpoint) or a ready Cooccurrence; None or 'train' counts.
    'reference' for either source is the reference's own file for the dataset (train_data.name).
    """
    labels = list(train_data.labels)
    if isinstance(cooccurrence, str) and cooccurrence == COUNTED:
        cooccurrence = None
    named = any(isinstance(s, str) and s == REFERENCE for s in (vectors, cooccurrence))
    if named and train_data.name in REFERENCE_LABELS:
        check_label_order(train_data.name, labels, f"the {train_data.name} labels")
    vectors = resolve(vectors, train_data.name, "word_vectors")
    cooccurrence = resolve(cooccurrence, train_data.name, "cooccurrence")
    if cooccurrence is None:
        if len(train_data) == 0:
            raise MSRNError(f"split {train_data.split!r} of {train_data.name} holds no images to count labels on")
        co, num_images = count_cooccurrence(train_data.targets), len(train_data)
    else:
        co = cooccurrence if isinstance(cooccurrence, Cooccurrence) else read_cooccurrence(cooccurrence)
        num_images = None
        if co.num_classes != len(labels):
            raise MSRNError(f"co-occurrence {cooccurrence} has {co.num_classes} labels, the dataset {len(labels)}")
    vecs, source = label_vectors(labels, vectors, name_map)
    return LabelSet(labels, co, vecs, source, tau, reweight, num_images)
