"""`msrn demo`: the main job on a fresh machine, with no download.

Generates the built-in `scenes` benchmark (pictograms at many sizes, in clutter, some told apart
only by the labels around them: msrn/data/scenes.py), trains a small MSRN on the CPU, trains the
same backbone without the MSRN head as a baseline, and writes both run folders plus a summary:
the side-by-side table, mAP by object size and for the ambiguous labels, the seed spread of the
last benchmark run (benchmarks/ablation.py) and a few test images with where MSRN looked.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from msrn.data import build_dataset, ensure_scenes
from msrn.data.scenes import SIZE_BUCKETS, scenes_metrics
from msrn.engine.compare.cost import label_cosine
from msrn.engine.config import TrainConfig, preset_config
from msrn.engine.evaluate import predict_logits
from msrn.engine.train import train
from msrn.inference.draw import figure
from msrn.inference.explain import require_msrn
from msrn.inference.predictor import load
from msrn.io import atomic_write_json, atomic_write_text
from msrn.models import load_checkpoint
from msrn.options import Options, add_options, device_option, option
from msrn.plots import figure_image, save_image

# MSRN's and the baseline's per-seed results from the last `benchmarks/ablation.py --record` run
SEED_SPREAD = Path(__file__).with_name("seed_spread.json")
RUNS = {"msrn": "msrn_tiny", "baseline": "baseline_tiny"}
EXPLAINED = 4  # test images shown with MSRN's attention


def compute_threads(workers: int) -> int:
    """Torch threads that leave a core to each loading process: more threads than free cores make OpenMP
    spin (BENCHMARKS.md, "Where MSRN's gain comes from", measures it)."""
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - workers))


@dataclass(frozen=True, kw_only=True)
class DemoOptions(Options):
    """Options of `msrn demo`."""

    out: str = option("runs/demo", "folder for the data, both runs and summary.md (default runs/demo)")
    seed: int = option(0, "seeds the data and the training (default 0)", low=0)
    epochs: int | None = option(None, "override the scenes preset's epoch count", low=1)
    workers: int | None = option(None, "data-loading processes (default: the preset's)", low=0, metavar="N")
    device: str = device_option("auto")
    no_baseline: bool = option(False, "skip the baseline run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `msrn demo`."""
    add_options(p, DemoOptions)


def evaluate_run(folder: Path, cfg: TrainConfig, workers: int | None = None) -> dict:
    """A run's test metrics (metrics.json) plus its scenes splits, from best.pt."""
    m = json.loads((folder / "metrics.json").read_text())
    data = build_dataset("scenes", cfg.data, cfg.test_split or "test")
    logits = predict_logits(
        load_checkpoint(folder / "best.pt").model,
        data,
        cfg.image_size,
        cfg.batch_size,
        cfg.workers if workers is None else workers,
        torch.device("cpu"),
    )
    keys = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "epoch")
    return {**{k: m[k] for k in keys}, "splits": scenes_metrics(logits, data)}


def concurrent_runs(runs: int, workers: int, device: str) -> int:
    """Runs the demo trains at once on a CPU: one per core that a run's thread and its loading
    processes leave free. Each run keeps one thread, which stays fast when other jobs share the cores."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return max(1, min(runs, (os.cpu_count() or 1) // (1 + workers))) if on_cpu else 1


class _Tagged:
    """stderr of a run trained beside another: each line starts with the run's name; no progress bars."""

    def __init__(self, stream: TextIO, tag: str) -> None:
        self.stream, self.tag, self.fresh = stream, tag, True

    def write(self, text: str) -> int:
        parts = text.splitlines(keepends=True)
        out = []
        for part in parts:
            out.append(self.tag + part if self.fresh else part)
            self.fresh = part.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def train_run(name: str, cfg: TrainConfig, threads: int, tagged: bool = False) -> dict:
    """Train and evaluate one of the demo's runs with `threads` torch threads: its summary entry."""
    torch.set_num_threads(threads)
    if tagged:
        sys.stderr = _Tagged(sys.stderr, f"[{name}] ")
    t0 = time.time()
    train(cfg)
    seconds = round(time.time() - t0, 1)
    return {"model": cfg.model, "seconds": seconds, **evaluate_run(Path(cfg.out), cfg)}


def run_demo(
    out: Path,
    seed: int = 0,
    epochs: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    baseline: bool = True,
    data_size: tuple[int, int, int] | None = None,
    jobs: int | None = None,
) -> dict:
    """Train MSRN (and the plain baseline) on the scenes benchmark; return {name: metrics summary}.

    data_size: (train images, test images, image side) instead of the benchmark's (tests use tiny ones).
    jobs: runs trained at once, each in its own process with one thread (default: concurrent_runs).
    """
    out.mkdir(parents=True, exist_ok=True)
    size = dict(zip(("num_train", "num_test", "image_size"), data_size)) if data_size else {}
    data = ensure_scenes(out / "data", seed=seed, **size)
    cfgs = {
        name: preset_config(
            "scenes",
            data=str(data),
            out=str(out / name),
            model=model,
            seed=seed,
            epochs=epochs,
            workers=workers,
            device=device,
            image_size=size.get("image_size"),
        )
        for name, model in RUNS.items()
        if baseline or name != "baseline"
    }
    first = next(iter(cfgs.values()))
    jobs = jobs or concurrent_runs(len(cfgs), first.workers, device)
    if jobs > 1:
        print(f"training {' and '.join(cfgs)} at once, one process and one thread each", flush=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(train_run, name, cfg, 1, True) for name, cfg in cfgs.items()}
            return {name: future.result() for name, future in futures.items()}
    threads = torch.get_num_threads()
    try:
        return {name: train_run(name, cfg, compute_threads(cfg.workers)) for name, cfg in cfgs.items()}
    finally:
        torch.set_num_threads(threads)


def pick_images(
    truth: np.ndarray, msrn: np.ndarray, base: np.ndarray | None = None, count: int = EXPLAINED
) -> list[tuple[int, str]]:
    """Test images that teach, each with its caption: where MSRN beats the baseline most (without a
    baseline: where MSRN is most right), then the one where MSRN fails most. An image's error is the
    sum over labels of |truth - probability|. truth, msrn, base: N x C."""
    truth = truth.astype(np.float64)
    err = np.abs(truth - msrn).sum(1)
    fail = int(np.argmax(err))
    if base is not None:
        base_err = np.abs(truth - base).sum(1)
        best = [int(i) for i in np.argsort(base_err - err, kind="stable")[::-1] if i != fail][: count - 1]
        picks = [(i, f"Where MSRN beats the baseline most: error {err[i]:.2f} against the baseline's "
                     f"{base_err[i]:.2f} (sum over labels of |truth - probability|).") for i in best]  # fmt: skip
        fail_text = f" (the baseline's: {base_err[fail]:.2f})"
    else:
        best = [int(i) for i in np.argsort(err, kind="stable") if i != fail][: count - 1]
        picks = [(i, f"One MSRN gets right: error {err[i]:.2f} (sum over labels of |truth - probability|).")
                 for i in best]  # fmt: skip
        fail_text = ""
    return [*picks, (fail, f"Where MSRN fails most on the test split: error {err[fail]:.2f}{fail_text}.")]


def score_panel(labels: list[str], truth: np.ndarray, msrn: np.ndarray, base: np.ndarray, height: int) -> Image.Image:
    """Bars of both models' probabilities for the true labels and each model's top guesses."""
    shown = sorted(
        set(np.flatnonzero(truth)) | set(np.argsort(-msrn)[:4]) | set(np.argsort(-base)[:4]),
        key=lambda j: (not truth[j], -max(msrn[j], base[j])),
    )
    fig = Figure(figsize=(4.2, height / 100), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(shown))
    ax.barh(y - 0.2, [msrn[j] for j in shown], 0.4, label="MSRN", color="#1f77b4")
    ax.barh(y + 0.2, [base[j] for j in shown], 0.4, label="baseline", color="#ff7f0e")
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, [f"{labels[j]} {'✓' if truth[j] else '✗'}" for j in shown])
    for tick, j in zip(ax.get_yticklabels(), shown):
        tick.set_fontweight("bold" if truth[j] else "normal")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability (dashed: 0.5)")
    ax.set_title("✓ in the image, ✗ not", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return figure_image(fig)


def write_explanations(out: Path, summary: dict) -> list[tuple[str, str, str]]:
    """PNG per chosen test image (`pick_images`): MSRN's attention per top label and depth, both models'
    scores beside it; returns (path, labels in the image, caption) per picture."""
    data = build_dataset("scenes", out / "data", "test")
    msrn = load(out / "msrn" / "best.pt")
    similarity = label_cosine(require_msrn(msrn.model))  # None with a single label
    if similarity is not None:
        summary["msrn"]["label_similarity"] = round(similarity, 4)
    all_msrn = msrn.probabilities(data.images)
    all_base = load(out / "baseline" / "best.pt").probabilities(data.images) if "baseline" in summary else None
    chosen = pick_images(data.targets == 1, all_msrn, all_base)
    expls = msrn.explain([data.images[i] for i, _ in chosen], k=3)
    (out / "explain").mkdir(exist_ok=True)
    written = []
    for (i, caption), expl in zip(chosen, expls, strict=True):
        expl.name = f"test image {Path(data.images[i]).stem}"
        expl.caption = caption
        left = figure_image(figure(expl))
        if all_base is not None:
            right = score_panel(data.labels, data.targets[i] == 1, all_msrn[i], all_base[i], left.height)
            both = Image.new("RGB", (left.width + right.width, left.height), "white")
            both.paste(left, (0, 0))
            both.paste(right, (left.width, 0))
            left = both
        path = out / "explain" / f"{Path(data.images[i]).stem}.png"
        save_image(left, path)
        present = [data.labels[j] for j in np.flatnonzero(data.targets[i] == 1)]
        written.append((str(path.relative_to(out)), ", ".join(present), caption))
    return written


def spread_text() -> str:
    """The seed spread of the last benchmark run, or a line saying there is none."""
    try:
        spread = json.loads(SEED_SPREAD.read_text())
        runs, seeds = spread["runs"], spread["seeds"]
    except (OSError, ValueError, KeyError):
        return "No benchmark run is recorded (benchmarks/ablation.py --record writes one).\n"
    lines = [
        f"Seed spread, from the last benchmark run ({spread['date']}, `{spread['command']}`: seeds "
        f"{', '.join(map(str, seeds))}, each seeding the data and the training as `--seed` does here):",
        "",
        "| run | " + " | ".join(f"{m} mean ± std" for m in ("mAP", "CF1", "OF1")) + " | mAP per seed |",
        "|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        cells = [f"{np.mean(r[m]):.2f} ± {np.std(r[m], ddof=1):.2f}" for m in ("mAP", "CF1", "OF1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " / ".join(f"{v:.2f}" for v in r["mAP"]) + " |")
    gaps = [a - b for a, b in zip(runs["msrn"]["mAP"], runs["baseline"]["mAP"])]
    lines += [
        "",
        f"MSRN minus baseline, mAP per seed: {' / '.join(f'{g:+.2f}' for g in gaps)} "
        f"(mean {np.mean(gaps):+.2f}). A difference in the table above smaller than the spread "
        "across seeds says little. Full table: BENCHMARKS.md.",
    ]
    return "\n".join(lines) + "\n"


def write_summary(out: Path, summary: dict, explained: list[tuple[str, str, str]] | None = None) -> str:
    keys = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "seconds")
    lines = ["| run | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['model']} | "
            + " | ".join(f"{s[k]:.2f}" if k != "seconds" else f"{s[k]:.0f}" for k in keys)
            + " |"
        )
    splits = [*SIZE_BUCKETS, "ambiguous", "distinct"]
    by = ["| run | " + " | ".join(f"mAP {k}" for k in splits) + " |", "|---|" + "---|" * len(splits)]
    for name, s in summary.items():
        if "splits" in s:
            by.append(f"| {name} | " + " | ".join(f"{s['splits'][k]['mAP']:.2f}" for k in splits) + " |")
    sizes = ", ".join(f"{k} {lo}-{hi - 1} px" for k, (lo, hi) in SIZE_BUCKETS.items())
    text = (
        "# msrn demo: the scenes benchmark, test split\n\n" + "\n".join(lines) + "\n\n"
        "msrn: the small backbone with the MSRN head (label graph, groups, attention at three depths).\n"
        "baseline: the same backbone with global pooling and a linear classifier.\n\n"
        f"By object size (side of the object in a 128 px image: {sizes}) and for the labels that look "
        "exactly like another one and are told apart only by their scene (ambiguous) against the rest "
        "(distinct):\n\n" + "\n".join(by) + "\n\n" + spread_text()
    )
    if explained:
        sim = summary["msrn"].get("label_similarity")
        text += (
            "\n## Where MSRN looked\n\nEach picture: a test image, MSRN's three best labels with their "
            "attention at each depth (bright = looked there), and both models' probabilities."
        )
        if sim is not None:
            text += (
                f" MSRN's label semantic vectors have a mean pairwise cosine similarity of {sim:.3f} after "
                "training (1 would be one vector for all labels)"
                + (
                    ": they are nearly alike, so the maps differ little between labels. The attention "
                    "then works as a learned pooling of each feature channel at each depth, and the "
                    "classifier on top tells the labels apart."
                    if sim > 0.9
                    else "."
                )
            )
        text += "\n\n"
        text += "".join(f"- [{path}]({path}) (in the image: {present}). {caption}\n"
                        for path, present, caption in explained)  # fmt: skip
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", text)
    return text


def main(args: argparse.Namespace | DemoOptions) -> int:
    """Run `msrn demo`: both trainings, the explanations and the summary."""
    args = DemoOptions.from_args(args)
    out = Path(args.out)
    t0 = time.time()
    summary = run_demo(out, args.seed, args.epochs, args.workers, args.device, baseline=not args.no_baseline)
    explained = write_explanations(out, summary)
    print(write_summary(out, summary, explained))
    print(f"demo finished in {time.time() - t0:.0f} s; run folders under {out}")
    return 0
