"""Bring your own labels: the label list, its co-occurrence graph and its label vectors, checked.

`build_label_set` counts co-occurrence on the TRAINING split only (spec section 2), picks label
vectors from a source (hashed character n-grams by default, a GloVe/fastText text file, the
reference's pickles, or a sentence encoder) and returns a `LabelSet` that saves to a plain
tensor file and writes a readable report, so a user sees what the model will be told.
`msrn labels` is the command-line front end; `msrn train` calls `build_label_set` itself.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from msrn.data import DATASETS, DEFAULT_SPLITS, MultiLabelData, build_dataset
from msrn.errors import MSRNError
from msrn.io import atomic_save_torch, atomic_write_text, check_writable
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
from msrn.labels.reference_files import REFERENCE, check_label_order, default_sources, resolve
from msrn.labels.vectors_ngram import NGRAM_DIM, ngram_vectors
from msrn.labels.wordvec import label_words, load_word_vectors, read_name_map
from msrn.plots import save_figure
from msrn.targets import UNKNOWN

FORMAT = "msrn-labels"
VERSION = 1
REPORT_FILES = ("labels_report.md", "label_graph.png", "label_cooccurrence.png")
COUNTED = "train"  # the co-occurrence source that counts the training split
TOP_PARTNERS = 3  # strongest co-occurring labels listed per label in the report
KNOWN_ONLY = ("partial labels: co-occurrence counted over known entries only, P(j|i) = images with i and j / "
              "images with i where j is known (not / all images with i)")
VECTORS_HELP = (
    "label vector source: 'reference' (the reference's GloVe pickle for the dataset, fetched once and "
    "checked; the default for voc2007, coco2014, nuswide and apparel), 'ngram' (the default otherwise; "
    "hashed character n-grams, offline, spelling similarity only), 'ngram:DIM', 'encoder' or "
    "'encoder:MODEL' (sentence encoder, needs msrn[text]), or a file: GloVe/fastText text (.txt/.vec), "
    "a word-vector pickle (.pkl) or a C x dim .npy"
)
COOCCURRENCE_HELP = (
    "label co-occurrence: 'reference' (the reference's {'adj','nums'} pickle for the dataset, fetched once "
    "and checked; the default for voc2007, coco2014, nuswide and apparel), 'train' (count the training "
    "split; the default otherwise) or such a pickle file"
)


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
        dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
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
        """A_hat of spec section 2 (C x C float32) for this set's counts, tau and re-weighting."""
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
                cooccurrence=Cooccurrence(_as_array(d["counts"]), _as_array(d["nums"]),
                                          None if d.get("known") is None else _as_array(d["known"])),
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
        path = Path(path)
        if not path.is_file():
            raise MSRNError(f"label set {path} does not exist")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
            detail = found.group(1).split(". ")[0].strip() if found else type(e).__name__
            if "global" in detail.lower():
                raise MSRNError(f"{path} holds Python objects, not a plain label set; refusing it ({detail})") from None
            raise MSRNError(f"{path} is not a readable label set (truncated or corrupt?): {detail}") from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise MSRNError(f"{path} is not a readable label set (truncated or corrupt?): {first}") from None
        return cls.from_dict(obj, str(path))


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
            raise MSRNError(f"--vectors {spec}: expected ngram:DIM with an integer DIM") from None
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


# ------------------------------------------------------------------------------------ report


def diagnostics(ls: LabelSet) -> list[str]:
    """Plain-language warnings about the graph and vectors (unseen labels, odd counts, twin vectors)."""
    notes = []
    co, c = ls.cooccurrence, ls.num_classes
    unseen = [ls.labels[i] for i in range(c) if co.nums[i] <= 0]
    if unseen:
        notes.append(f"{len(unseen)} label(s) occur in no training image and get no edges: {', '.join(unseen[:10])}")
    linked = {i for i, j, _ in ls.edges()} | {j for i, j, _ in ls.edges()}
    isolated = [ls.labels[i] for i in range(c) if i not in linked and co.nums[i] > 0]
    if isolated and len(isolated) < c:
        notes.append(f"{len(isolated)} label(s) have no edge at tau {ls.tau:g}: {', '.join(isolated[:10])}")
    if np.any(np.diag(co.counts) != 0):
        notes.append("the counts' diagonal is not zero (as in the reference NUS-WIDE pickle); used as stored")
    if not np.array_equal(co.counts, co.counts.T):
        notes.append("the counts are not symmetric (as in the reference Apparel pickle); used as stored")
    if np.any(ls.conditional() > 1.0 + 1e-9):
        notes.append("some P(j|i) exceed 1: the pair counts and image counts disagree; used as stored")
    rounded = np.round(ls.word_vectors.astype(np.float64), 6)
    _, first, counts = np.unique(rounded, axis=0, return_index=True, return_counts=True)
    twins = [ls.labels[i] for i, n in zip(first, counts, strict=True) if n > 1]
    if twins:
        shown = ", ".join(twins[:5])
        notes.append(f"some labels share an identical vector (e.g. {shown}); the model cannot tell them apart")
    return notes


def _fmt_label(name: str) -> str:
    """A label name safe inside a markdown table cell."""
    return name.replace("|", "\\|")


def report_text(ls: LabelSet) -> str:
    """The markdown report: per label its count and partners, the edges, the vectors' nearest labels."""
    co, p, c = ls.cooccurrence, ls.conditional(), ls.num_classes
    edge_list = ls.edges()
    v = ls.word_vectors.astype(np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    images = f"{ls.num_images} training images" if ls.num_images is not None else "a stored co-occurrence file"
    lines = [
        "# Label set report",
        "",
        f"- labels: {c}, counted on {images}",
        *([f"- {KNOWN_ONLY}"] if co.known is not None else []),
        f"- label vectors: {ls.vector_source}, {ls.word_vectors.shape[1]} dimensions",
        f"- graph: edge i -> j when P(j|i) >= tau = {ls.tau:g}; re-weighting p = {ls.reweight:g}; "
        f"{len(edge_list)} edges",
        "- drawings: `label_graph.png` (arrows i -> j, node size by image count) and "
        "`label_cooccurrence.png` (P(j|i), row i, column j; boxed cells pass tau)",
        "",
    ]
    notes = diagnostics(ls)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [
        "## Labels",
        "",
        "| # | label | images | strongest co-occurring labels, P(j\\|i) | edges out | nearest by vector |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(ls.labels):
        row = p[i].copy()
        row[i] = -1.0
        order = [j for j in np.argsort(-row, kind="stable")[:TOP_PARTNERS] if row[j] > 0]
        partners = ", ".join(f"{_fmt_label(ls.labels[j])} {row[j]:.2f}" for j in order) or "none"
        out = sum(1 for a, _, _ in edge_list if a == i)
        nearest = f"{_fmt_label(ls.labels[int(np.argmax(sim[i]))])} {np.max(sim[i]):.2f}" if c > 1 else "-"
        lines.append(f"| {i} | {_fmt_label(name)} | {co.nums[i]:g} | {partners} | {out} | {nearest} |")
    lines += ["", f"## Edges passing tau = {ls.tau:g}", ""]
    if edge_list:
        lines += ["| from i | to j | P(j\\|i) | images with both |", "|---|---|---|---|"]
        lines += [
            f"| {_fmt_label(ls.labels[i])} | {_fmt_label(ls.labels[j])} | {pij:.3f} | {co.counts[i, j]:g} |"
            for i, j, pij in edge_list
        ]
    else:
        lines.append("No pair passes the threshold: every label only attends to itself.")
    lines += [
        "",
        "The model's attention layers only use which entries of the adjacency are non-zero: each label",
        "looks at itself and at the labels its edges point to (spec section 2).",
        "",
    ]
    return "\n".join(lines)


def plot_label_graph(ls: LabelSet, path: Path) -> None:
    """Circular drawing of the graph: nodes sized by image count, an arrow i -> j per edge."""
    c = ls.num_classes
    side = float(np.clip(5 + 0.1 * c, 6, 16))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    angles = np.pi / 2 - 2 * np.pi * np.arange(c) / c
    pos = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    nums = np.maximum(ls.cooccurrence.nums, 0)
    sizes = 40 + 900 * np.sqrt(nums / max(nums.max(), 1e-12)) * (20 / max(c, 20))
    radius_pt = np.sqrt(sizes) / 2
    edge_list = ls.edges()
    for i, j, pij in edge_list:
        strength = min(pij, 1.0)
        ax.annotate(
            "", xy=pos[j], xytext=pos[i],
            arrowprops=dict(arrowstyle="-|>", color="tab:red", alpha=0.35 + 0.6 * strength, lw=0.6 + 2.4 * strength,
                            shrinkA=radius_pt[i] + 1, shrinkB=radius_pt[j] + 1, connectionstyle="arc3,rad=0.12",
                            mutation_scale=12),
        )  # fmt: skip
    ax.scatter(pos[:, 0], pos[:, 1], s=sizes, c="tab:blue", alpha=0.8, zorder=3)
    font = float(np.clip(240 / max(c, 1), 5, 11))
    gap = 0.05 + radius_pt / (side * 72 / 3.4)  # node radius in data units (3.4 = axis span) plus a margin
    for k, name in enumerate(ls.labels):
        cx, cy = pos[k]
        x, y = pos[k] * (1 + gap[k])
        if c > 24:  # many labels: radial text, read left to right on both halves
            angle = float(np.degrees(angles[k]))
            rotation, ha, va = (angle, "left", "center") if cx >= 0 else (angle + 180, "right", "center")
        else:
            rotation = 0.0
            ha = "left" if cx > 0.2 else "right" if cx < -0.2 else "center"
            va = "bottom" if cy > 0.2 else "top" if cy < -0.2 else "center"
        ax.text(x, y, f"{name} ({nums[k]:g})", fontsize=font, ha=ha, va=va, rotation=rotation,
                rotation_mode="anchor")  # fmt: skip
    ax.set_xlim(-1.7, 1.7)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    title = f"label graph: {len(edge_list)} edges i -> j with P(j|i) >= {ls.tau:g}"
    ax.set_title(title if edge_list else title + " (none: labels attend only to themselves)")
    save_figure(fig, path)


def plot_cooccurrence(ls: LabelSet, path: Path) -> None:
    """Heatmap of P(j|i) (row i, column j) with label names; cells that pass tau are boxed."""
    c = ls.num_classes
    p = ls.conditional()
    side = float(np.clip(3 + 0.2 * c, 6, 20))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.clip(p, 0, 1), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="P(j | i)", extend="max" if p.max() > 1 else "neither")
    font = float(np.clip(300 / max(c, 1), 4, 10))
    ax.set_xticks(range(c), ls.labels, rotation=90, fontsize=font)
    ax.set_yticks(range(c), ls.labels, fontsize=font)
    ax.set_xlabel("j (co-occurring label)")
    ax.set_ylabel("i (given label)")
    rows, cols = np.nonzero(p >= ls.tau)
    ax.scatter(cols, rows, s=(side * 60 / c) ** 2, marker="s", facecolors="none", edgecolors="red", linewidths=1)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if min(p[i, j], 1) > 0.6 else "white")  # fmt: skip
    ax.set_title(f"P(j|i) = M[i,j] / n[i]; boxed: >= tau {ls.tau:g}")
    save_figure(fig, path)


def write_report(ls: LabelSet, folder: str | Path) -> list[Path]:
    """Write the markdown report and the two drawings into folder (atomically); return their paths."""
    folder = Path(folder)
    check_writable(folder)
    text_path, graph_path, heat_path = (folder / name for name in REPORT_FILES)
    atomic_write_text(text_path, report_text(ls))
    plot_label_graph(ls, graph_path)
    plot_cooccurrence(ls, heat_path)
    return [text_path, graph_path, heat_path]


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn labels`."""
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="dataset kind")
    parser.add_argument("--data", required=True, help="dataset folder (or CSV file for --dataset csv)")
    parser.add_argument("--split", help="split to count on (default: the dataset's training split)")
    parser.add_argument("--out", default="labels.pt", help="label set file to write (default: labels.pt)")
    parser.add_argument("--vectors", "--word-vectors", dest="vectors", help=VECTORS_HELP)
    parser.add_argument("--name-map", help="file of 'label=words' lines for odd names, e.g. diningtable=dining table")
    parser.add_argument("--tau", type=float, default=TAU, help=f"edge threshold on P(j|i) (default {TAU})")
    parser.add_argument("--reweight", type=float, default=REWEIGHT, help=f"neighbour weight p (default {REWEIGHT})")
    parser.add_argument("--cooccurrence", help=COOCCURRENCE_HELP)
    parser.add_argument("--report", help="folder for the report and drawings (default: the folder of --out)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


def summary(ls: LabelSet) -> dict[str, Any]:
    """A JSON-ready summary: labels, image counts, edges, vector source and graph options."""
    return {
        "labels": ls.labels,
        "counts": {name: float(n) for name, n in zip(ls.labels, ls.cooccurrence.nums, strict=True)},
        "num_images": ls.num_images,
        "vector_source": ls.vector_source,
        "vector_dim": int(ls.word_vectors.shape[1]),
        "tau": ls.tau,
        "reweight": ls.reweight,
        "known_entries_only": ls.cooccurrence.known is not None,
        "edges": [{"from": ls.labels[i], "to": ls.labels[j], "p": round(p, 6)} for i, j, p in ls.edges()],
        "notes": diagnostics(ls),
    }


def main(args: argparse.Namespace) -> int:
    """Build, save and report the label set of a dataset's training split."""
    train_split, test_split = DEFAULT_SPLITS[args.dataset]
    split = args.split or train_split
    if split == test_split:
        print(f"msrn labels: warning: counting on the test split {split!r}; the graph should come from "
              "training data only", file=sys.stderr)  # fmt: skip
    data = build_dataset(args.dataset, args.data, split)
    preset = default_sources(args.dataset)  # the sources `msrn train` would use
    vectors = args.vectors or preset.get("word_vectors")
    cooccurrence = args.cooccurrence or preset.get("cooccurrence") or COUNTED
    ls = build_label_set(data, vectors, args.name_map, args.tau, args.reweight, cooccurrence)
    out = Path(args.out)
    check_writable(out.parent if str(out.parent) else Path("."))
    ls.save(out)
    files = write_report(ls, Path(args.report) if args.report else out.parent)
    info = summary(ls)
    if args.json:
        print(json.dumps({**info, "out": str(out), "report": [str(f) for f in files]}, indent=2))
        return 0
    counted = f"{ls.num_images} images ({args.dataset}, split {split})" if ls.num_images is not None else (
        f"the reference's {args.dataset} file" if cooccurrence == REFERENCE else f"the stored file {cooccurrence}")
    print(f"{ls.num_classes} labels, co-occurrence from {counted}")
    if ls.cooccurrence.known is not None:
        print(f"{KNOWN_ONLY}; {int((data.targets == UNKNOWN).sum())} unknown entries")
    print(f"vectors: {ls.vector_source} ({ls.num_classes} x {ls.word_vectors.shape[1]})")
    edge_list = ls.edges()
    print(f"graph: tau {ls.tau:g}, re-weighting {ls.reweight:g}: {len(edge_list)} edges i -> j")
    width = max(len(x) for x in ls.labels)
    for i, name in enumerate(ls.labels):
        outs = ", ".join(f"{ls.labels[j]} {p:.2f}" for a, j, p in edge_list if a == i)
        print(f"  {name:<{width}}  {ls.cooccurrence.nums[i]:>8g} images" + (f"  -> {outs}" if outs else ""))
    for note in info["notes"]:
        print(f"note: {note}")
    print(f"wrote {out} and the report {', '.join(str(f) for f in files)}")
    return 0
