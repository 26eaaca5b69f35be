"""The label set's report and the `msrn labels` command: what the model will be told about the labels,
as a markdown report, two drawings (the graph and the P(j|i) heatmap) and a summary on the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from msrn.data import DEFAULT_SPLITS, DatasetOptions
from msrn.io import atomic_write_text, check_writable
from msrn.labels.labelset import COUNTED, LabelSet, build_label_set
from msrn.labels.options import cooccurrence_option, name_map_option, reweight_option, tau_option, word_vectors_option
from msrn.labels.reference_files import REFERENCE, default_sources
from msrn.options import add_options, option
from msrn.plots import save_figure
from msrn.targets import UNKNOWN

REPORT_FILES = ("labels_report.md", "label_graph.png", "label_cooccurrence.png")
TOP_PARTNERS = 3  # strongest co-occurring labels listed per label in the report
# above this many labels the report lists the most and least frequent REPORT_EXTREMES each, the SHOWN_EDGES
# strongest edges, and draws histograms and the most frequent labels' heatmap instead of every label
MAX_LISTED_LABELS = 100
REPORT_EXTREMES = 25
SHOWN_EDGES = 200
KNOWN_ONLY = (
    "partial labels: co-occurrence counted over known entries only, P(j|i) = images with i and j / "
    "images with i where j is known (not / all images with i)"
)


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
    shown = list(range(c))
    if c > MAX_LISTED_LABELS:
        by_count = [int(i) for i in np.argsort(-co.nums, kind="stable")]
        shown = by_count[:REPORT_EXTREMES] + by_count[-REPORT_EXTREMES:]
        lines += [f"## Images per label ({c} labels)", "", "| images | labels |", "|---|---|"]
        lines += [f"| {bucket} | {n} |" for bucket, n in _frequency_buckets(co.nums)]
        lines += ["", f"The {REPORT_EXTREMES} most and the {REPORT_EXTREMES} least frequent labels:", ""]
    lines += [
        "## Labels",
        "",
        "| # | label | images | strongest co-occurring labels, P(j\\|i) | edges out | nearest by vector |",
        "|---|---|---|---|---|---|",
    ]
    out_degree = np.bincount([a for a, _, _ in edge_list], minlength=c)
    for i in shown:
        name = ls.labels[i]
        row = p[i].copy()
        row[i] = -1.0
        order = [j for j in np.argsort(-row, kind="stable")[:TOP_PARTNERS] if row[j] > 0]
        partners = ", ".join(f"{_fmt_label(ls.labels[j])} {row[j]:.2f}" for j in order) or "none"
        nearest = f"{_fmt_label(ls.labels[int(np.argmax(sim[i]))])} {np.max(sim[i]):.2f}" if c > 1 else "-"
        lines.append(f"| {i} | {_fmt_label(name)} | {co.nums[i]:g} | {partners} | {out_degree[i]} | {nearest} |")
    lines += ["", f"## Edges passing tau = {ls.tau:g}", ""]
    if len(edge_list) > SHOWN_EDGES:
        lines += [f"The {SHOWN_EDGES} strongest of {len(edge_list)}:", ""]
    if edge_list:
        lines += ["| from i | to j | P(j\\|i) | images with both |", "|---|---|---|---|"]
        lines += [
            f"| {_fmt_label(ls.labels[i])} | {_fmt_label(ls.labels[j])} | {pij:.3f} | {co.counts[i, j]:g} |"
            for i, j, pij in edge_list[:SHOWN_EDGES]
        ]
    else:
        lines.append("No pair passes the threshold: every label only attends to itself.")
    lines += [
        "",
        "The model's attention layers only use which entries of the adjacency are non-zero: each label",
        "looks at itself and at the labels its edges point to (docs/design.md §2).",
        "",
    ]
    return "\n".join(lines)


def _frequency_buckets(nums: np.ndarray) -> list[tuple[str, int]]:
    """(range of images per label, number of labels) on a doubling scale: 0, 1, 2-3, 4-7, ..."""
    nums = np.asarray(nums, dtype=np.int64)
    bins = np.where(nums > 0, np.floor(np.log2(np.maximum(nums, 1))).astype(np.int64) + 1, 0)
    out = []
    for b, n in enumerate(np.bincount(bins)):
        if n:
            low, high = (0, 0) if b == 0 else (2 ** (b - 1), 2**b - 1)
            out.append((f"{low}" if low == high else f"{low}-{high}", int(n)))
    return out


def plot_label_histograms(ls: LabelSet, path: Path) -> None:
    """For large label sets, in place of the graph drawing: histograms of images and edges per label."""
    edge_list = ls.edges()
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    nums = np.maximum(ls.cooccurrence.nums, 0)
    left.hist(np.log10(nums + 1), bins=40, color="tab:blue")
    left.set_xlabel("log10(images + 1)")
    left.set_ylabel("labels")
    left.set_title(f"images per label ({ls.num_classes} labels)")
    right.hist(np.bincount([a for a, _, _ in edge_list], minlength=ls.num_classes), bins=40, color="tab:red")
    right.set_xlabel("edges out of the label")
    right.set_ylabel("labels")
    right.set_title(f"label graph: {len(edge_list)} edges with P(j|i) >= {ls.tau:g}")
    save_figure(fig, path)


def plot_label_graph(ls: LabelSet, path: Path) -> None:
    """Circular drawing of the graph: nodes sized by image count, an arrow i -> j per edge (histograms
    instead above MAX_LISTED_LABELS labels)."""
    c = ls.num_classes
    if c > MAX_LISTED_LABELS:
        plot_label_histograms(ls, path)
        return
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
    """Heatmap of P(j|i) (row i, column j) with label names; cells that pass tau are boxed. Above
    MAX_LISTED_LABELS labels, the most frequent MAX_LISTED_LABELS of them."""
    names, p = ls.labels, ls.conditional()
    if ls.num_classes > MAX_LISTED_LABELS:
        top = np.sort(np.argsort(-ls.cooccurrence.nums, kind="stable")[:MAX_LISTED_LABELS])
        names, p = [names[i] for i in top], p[np.ix_(top, top)]
    c = len(names)
    side = float(np.clip(3 + 0.2 * c, 6, 20))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.clip(p, 0, 1), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="P(j | i)", extend="max" if p.max() > 1 else "neither")
    font = float(np.clip(300 / max(c, 1), 4, 10))
    ax.set_xticks(range(c), names, rotation=90, fontsize=font)
    ax.set_yticks(range(c), names, fontsize=font)
    ax.set_xlabel("j (co-occurring label)")
    ax.set_ylabel("i (given label)")
    rows, cols = np.nonzero(p >= ls.tau)
    ax.scatter(cols, rows, s=(side * 60 / c) ** 2, marker="s", facecolors="none", edgecolors="red", linewidths=1)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if min(p[i, j], 1) > 0.6 else "white")  # fmt: skip
    shown = f" ({c} most frequent of {ls.num_classes} labels)" if c < ls.num_classes else ""
    ax.set_title(f"P(j|i) = M[i,j] / n[i]; boxed: >= tau {ls.tau:g}{shown}")
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


@dataclass(frozen=True, kw_only=True)
class LabelsOptions(DatasetOptions):
    """Options of `msrn labels`."""

    split: str | None = option(None, "split to count on (default: the dataset's training split)")
    out: str = option("labels.pt", "label set file to write (default: labels.pt)")
    word_vectors: str | None = word_vectors_option()
    name_map: str | None = name_map_option()
    tau: float = tau_option()
    reweight: float = reweight_option()
    cooccurrence: str | None = cooccurrence_option()
    report: str | None = option(None, "folder for the report and drawings (default: the folder of --out)")
    json: bool = option(False, "print a JSON summary instead of text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn labels`."""
    add_options(parser, LabelsOptions)


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


def main(args: argparse.Namespace | LabelsOptions) -> int:
    """Build, save and report the label set of a dataset's training split."""
    args = LabelsOptions.from_args(args)
    split = args.split_name(0)
    if split == DEFAULT_SPLITS[args.dataset][1]:
        print(f"msrn labels: warning: counting on the test split {split!r}; the graph should come from "
              "training data only", file=sys.stderr)  # fmt: skip
    data = args.read(split)  # the images `msrn train` reads
    preset = default_sources(args.dataset)  # the sources `msrn train` would use
    vectors = args.word_vectors or preset.get("word_vectors")
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
    counted = (
        f"{ls.num_images} images ({args.dataset}, split {split})"
        if ls.num_images is not None
        else (
            f"the reference's {args.dataset} file" if cooccurrence == REFERENCE else f"the stored file {cooccurrence}"
        )
    )
    print(f"{ls.num_classes} labels, co-occurrence from {counted}")
    if ls.cooccurrence.known is not None:
        print(f"{KNOWN_ONLY}; {int((data.targets == UNKNOWN).sum())} unknown entries")
    print(f"vectors: {ls.vector_source} ({ls.num_classes} x {ls.word_vectors.shape[1]})")
    edge_list = ls.edges()
    print(f"graph: tau {ls.tau:g}, re-weighting {ls.reweight:g}: {len(edge_list)} edges i -> j")
    width = max(len(x) for x in ls.labels)
    outgoing: dict[int, list[str]] = {}
    for a, j, p in edge_list:
        outgoing.setdefault(a, []).append(f"{ls.labels[j]} {p:.2f}")
    listed: Sequence[int] = range(ls.num_classes)
    if ls.num_classes > MAX_LISTED_LABELS:  # the report has the frequency table; the terminal the extremes
        by_count = [int(i) for i in np.argsort(-ls.cooccurrence.nums, kind="stable")]
        listed = by_count[:REPORT_EXTREMES] + by_count[-REPORT_EXTREMES:]
        print(f"the {REPORT_EXTREMES} most and least frequent of {ls.num_classes} labels:")
    for i in listed:
        outs = ", ".join(outgoing.get(i, []))
        print(f"  {ls.labels[i]:<{width}}  {ls.cooccurrence.nums[i]:>8g} images" + (f"  -> {outs}" if outs else ""))
    for note in info["notes"]:
        print(f"note: {note}")
    print(f"wrote {out} and the report {', '.join(str(f) for f in files)}")
    return 0
