"""The study's summary (mean and spread over seeds per head and recipe), its Markdown report and its plots.

Everything here is read from compare.json, so a report can be rewritten from a finished or partial study
without training anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from msrn.engine.recipes import RECIPE_NOTES
from msrn.io import atomic_write_text
from msrn.plots import save_figure

SUMMARISED = ("mAP", "CF1", "OF1")
SLICES = {"small": "small (8-15 px)", "medium": "medium (16-31 px)", "large": "large (32-64 px)",
          "ambiguous": "look-alike labels", "distinct": "other labels"}  # fmt: skip


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values themselves."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(float(v.std(ddof=1)), 4) if v.size > 1 else None,
        "per_seed": [round(float(x), 4) for x in v],
    }


def summarise(result: dict[str, Any]) -> dict[str, dict[str, dict]]:
    """recipe -> head -> the seeds run and the spread of each metric, slice and label cosine over them."""
    summary: dict[str, dict[str, dict]] = {}
    for run in sorted(result["runs"].values(), key=lambda r: (r["recipe"], r["head"], r["seed"])):
        summary.setdefault(run["recipe"], {}).setdefault(run["head"], {"runs": []})["runs"].append(run)
    for heads in summary.values():
        for entry in heads.values():
            runs = entry.pop("runs")
            entry["seeds"] = [r["seed"] for r in runs]
            for metric in SUMMARISED:
                entry[metric] = spread([r[metric] for r in runs])
            if all("slices" in r for r in runs):
                entry["slices"] = {
                    name: spread([r["slices"][name]["mAP"] for r in runs])
                    for name in SLICES
                    if all(r["slices"][name]["mAP"] is not None for r in runs)
                }
            cosines = [r["label_cosine"] for r in runs if r.get("label_cosine") is not None]
            entry["label_cosine"] = spread(cosines) if len(cosines) == len(runs) else None
    return summary


def _pm(entry: dict | None, digits: int = 2) -> str:
    if not entry:
        return "-"
    std = f" ± {entry['std']:.{digits}f}" if entry.get("std") is not None else ""
    return f"{entry['mean']:.{digits}f}{std}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def markdown(result: dict[str, Any], command: str) -> str:
    """The report: settings, per recipe the table of heads (accuracy, cost) and of slices, then the plots."""
    s, costs, summary = result["settings"], result["costs"], result["summary"]
    bb = costs["backbone"]
    measured = costs["measured"]
    lines = [
        f"# Which head? {s['dataset']}, backbone `{s['backbone']}`",
        "",
        f"Command: `{command}`",
        "",
        "Every head trained on the same data with the same backbone initialisation and seeds under each recipe; "
        "the epoch kept is the best on a validation split carved from training (never the test split); test "
        "metrics of that epoch, mean ± sample standard deviation over the seeds. Costs: head weights, forward "
        f"FLOPs per image at {measured['image_size']} px, and time per image as a multiple of the bare backbone "
        f"(`{bb['arch']}`: {_count(bb['params'])} weights, {bb['flops'] / 1e9:.3f} GFLOPs, "
        f"{bb['train']['ms_per_image']:.2f} ms training, {bb['infer']['ms_per_image']:.2f} ms inference per image), "
        f"the fastest of {measured['rounds']} interleaved rounds on {measured['device']} at batch {measured['batch']} "
        "(in brackets: the range of the ratio round by round). Label cosine: mean pairwise cosine of the vectors "
        "the head learns per label (1: all alike).",
        "",
        f"Settings: `{s['train']}`" + (f", scenes data {s['scenes_size']}" if s.get("scenes_size") else ""),
        "",
    ]
    for recipe, heads in summary.items():
        lines += [
            f"## Recipe `{recipe}`: {RECIPE_NOTES.get(recipe, '')}",
            "",
            "| head | test mAP | mAP per seed | CF1 | OF1 | head weights | head MFLOPs | training x backbone "
            "| inference x backbone | label cosine |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for head, e in sorted(heads.items(), key=lambda kv: -kv[1]["mAP"]["mean"]):
            c = costs.get(head)
            cost_cells = (
                [_count(c["head_params"]), f"{c['head_flops'] / 1e6:.3g}"]
                + [
                    f"{c[m]['x_backbone']:.2f} [{c[m]['range'][0]:.2f}-{c[m]['range'][1]:.2f}]"
                    for m in ("train", "infer")
                ]
                if c
                else ["-"] * 4
            )
            per_seed = " / ".join(f"{v:.2f}" for v in e["mAP"]["per_seed"])
            lines.append(
                f"| {head} | {_pm(e['mAP'])} | {per_seed} | {_pm(e['CF1'])} | {_pm(e['OF1'])} | "
                + " | ".join(cost_cells)
                + f" | {_pm(e['label_cosine'], 3)} |"
            )
        if any("slices" in e for e in heads.values()):
            lines += ["", "| head (mAP) | " + " | ".join(SLICES.values()) + " |", "|---|" + "---|" * len(SLICES)]
            for head, e in sorted(heads.items()):
                cells = [_pm(e.get("slices", {}).get(name)) for name in SLICES]
                lines.append(f"| {head} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![mAP against cost](map_vs_cost.png)", ""]
    if any("slices" in e for heads in summary.values() for e in heads.values()):
        lines += ["![mAP per slice](slices.png)", ""]
    return "\n".join(lines)


def plot_map_vs_cost(result: dict[str, Any], path: Path) -> None:
    """Test mAP (mean, bar: standard deviation over seeds) against training cost per image, x backbone."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for (recipe, heads), marker in zip(result["summary"].items(), "os^Dv"):
        for head, e in heads.items():
            if head not in result["costs"]:
                continue
            x = result["costs"][head]["train"]["x_backbone"]
            ax.errorbar(x, e["mAP"]["mean"], yerr=e["mAP"]["std"] or 0, fmt=marker, capsize=3,
                        label=f"{head}, {recipe}")  # fmt: skip
            ax.annotate(head, (x, e["mAP"]["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("training time per image, x the bare backbone")
    ax.set_ylabel("test mAP (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def plot_slices(result: dict[str, Any], path: Path) -> None:
    """Per recipe, grouped bars: each head's mean mAP on each scenes slice."""
    recipes = [r for r, heads in result["summary"].items() if any("slices" in e for e in heads.values())]
    fig = Figure(figsize=(7.5, 3.2 * max(1, len(recipes))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(1, len(recipes)), 1))
    for ax, recipe in zip(axes, recipes):
        heads = sorted(h for h, e in result["summary"][recipe].items() if "slices" in e)
        width = 0.8 / max(1, len(heads))
        x = np.arange(len(SLICES))
        for i, head in enumerate(heads):
            sl = result["summary"][recipe][head]["slices"]
            means = [sl[n]["mean"] if n in sl else np.nan for n in SLICES]
            errs = [(sl[n]["std"] or 0) if n in sl else 0 for n in SLICES]
            ax.bar(x + (i - (len(heads) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=head)
        ax.set_xticks(x, list(SLICES.values()), fontsize=8)
        ax.set_ylabel("test mAP")
        ax.set_title(f"recipe {recipe}", fontsize=9)
        ax.legend(fontsize=7, ncol=min(4, len(heads)))
    save_figure(fig, path)


def write_study_report(out: Path, result: dict[str, Any], command: str) -> None:
    """report.md and its plots in `out` (result["summary"] must be filled)."""
    if not result["summary"]:
        return
    plot_map_vs_cost(result, out / "map_vs_cost.png")
    if any("slices" in e for heads in result["summary"].values() for e in heads.values()):
        plot_slices(result, out / "slices.png")
    atomic_write_text(out / "report.md", markdown(result, command))
