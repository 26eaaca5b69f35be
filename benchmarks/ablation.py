"""Where MSRN's gain comes from, on the built-in `scenes` benchmark, over several seeds.

Trains each row (the plain baseline, a baseline with an MLP head of about MSRN's head size, MSRN,
and MSRN with one part switched off) once per seed with the `scenes` preset, seed s meaning the
data generated with seed s and training with seed s, as `msrn demo --seed s` does. Every run is
evaluated on its test split overall, per object-size bucket and on the ambiguous labels (those
told apart only by their scene) against the others. Writes to --out:

  runs.json   one record per (row, seed), written after each run; a rerun skips the runs it holds
  table.md    mean +- sample standard deviation over the seeds of mAP, CF1 and OF1

--record also writes the seed spread of MSRN and the baseline to seed_spread.json in --out;
copied to msrn/seed_spread.json in a checkout, it is what `msrn demo` quotes beside its
single-seed result (the benchmark never writes into the package itself). --quick runs every row on tiny data
(32 training images of 64 px, one epoch, two seeds) to check the script, not the model.

    python benchmarks/ablation.py --out runs/ablation --record      # the full benchmark
    python benchmarks/ablation.py --quick --out /tmp/ablation       # the check (seconds)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from pathlib import Path

import numpy as np

from msrn.data.scenes import ensure_scenes
from msrn.demo import SEED_SPREAD, compute_threads, evaluate_run
from msrn.engine.config import preset_config
from msrn.io import atomic_write_json, atomic_write_text
from msrn.models import create_model

# row -> (model, MSRN ablation switches); the paper's model is "msrn"
ROWS: dict[str, tuple[str, dict]] = {
    "baseline": ("baseline_tiny", {}),
    "baseline_mlp": ("baseline_mlp_tiny", {}),
    "msrn": ("msrn_tiny", {}),
    "msrn depth 3 only": ("msrn_tiny", {"depths": (3,)}),
    "msrn depths 2+3": ("msrn_tiny", {"depths": (2, 3)}),
    "msrn depth 1 only": ("msrn_tiny", {"depths": (1,)}),
    "msrn no groups": ("msrn_tiny", {"group_semantics": False}),
    "msrn no graph": ("msrn_tiny", {"label_graph": False}),
    "msrn elementwise": ("msrn_tiny", {"head": "elementwise"}),
}
ROW_NOTES = {
    "baseline": "backbone, global average pooling, linear",
    "baseline_mlp": "backbone, global average pooling, MLP head of MSRN's head size",
    "msrn": "the paper's model: depths 1+2+3, groups, label graph",
    "msrn depth 3 only": "reads layer4 only",
    "msrn depths 2+3": "reads layer3 and layer4",
    "msrn depth 1 only": "reads layer2 only",
    "msrn no groups": "no global group semantics",
    "msrn no graph": "identity adjacency in the GAT layers",
    "msrn elementwise": "the reference's element-wise head (W, B) instead of the MLP",
}
METRICS = ("mAP", "CF1", "OF1")
SPLITS = ("small", "medium", "large", "ambiguous", "distinct")
FULL = dict(seeds=(0, 1, 2), num_train=2000, num_test=600, image_size=128, epochs=None, batch_size=None)
QUICK = dict(seeds=(0, 1), num_train=32, num_test=16, image_size=64, epochs=1, batch_size=16)


def head_weights(model: str, switches: dict, num_classes: int = 16) -> int:
    """Weights outside the backbone (the part the rows differ in), for the scenes benchmark's labels."""
    m = create_model(model, num_classes=num_classes, **switches)
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith("backbone."))


def data_for(seed: int, out: Path, settings: dict) -> Path:
    """The seed's scenes data under out/data, generated on first use."""
    return ensure_scenes(
        out / "data" / f"seed{seed}",
        seed=seed,
        num_train=settings["num_train"],
        num_test=settings["num_test"],
        image_size=settings["image_size"],
    )


def run_one(row: str, seed: int, out: Path, settings: dict, workers: int, threads: int | None = None) -> dict:
    """Train one row with one seed and evaluate it: a runs.json record."""
    import torch

    torch.set_num_threads(threads or compute_threads(workers))
    model, switches = ROWS[row]
    data = data_for(seed, out, settings)
    folder = out / "runs" / f"{row.replace(' ', '_').replace('+', '')}_seed{seed}"
    overrides = dict(
        data=str(data),
        out=str(folder),
        model=model,
        seed=seed,
        workers=workers,
        image_size=settings["image_size"],
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        **switches,
    )
    if settings["epochs"] is not None:
        overrides["lr_steps"] = (max(1, settings["epochs"] * 3 // 4),)
    cfg = preset_config("scenes", **overrides)
    from msrn.engine.train import train

    t0 = time.time()
    train(cfg)
    seconds = time.time() - t0
    metrics = evaluate_run(folder, cfg, workers)
    return {
        "row": row,
        "seed": seed,
        "model": model,
        "switches": {k: list(v) if isinstance(v, tuple) else v for k, v in switches.items()},
        "seconds": round(seconds, 1),
        **metrics,
    }


def mean_std(values: list[float]) -> str:
    """'mean ± sample std' (one value: the value alone)."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if v.size > 1 else f"{v.mean():.2f}"


def tables(records: list[dict], rows: list[str], seeds: list[int]) -> str:
    """The two markdown tables: overall with per-seed mAP and the gap to the baseline, then by split."""
    by = {(r["row"], r["seed"]): r for r in records}
    done = [row for row in rows if all((row, s) in by for s in seeds)]
    head = [
        "| row | what | head weights | " + " | ".join(METRICS) + " | mAP per seed | mAP - baseline per seed | "
        "s per run |",
        "|---|---|---|" + "---|" * (len(METRICS) + 3),
    ]
    for row in done:
        runs = [by[row, s] for s in seeds]
        cells = [mean_std([r[m] for r in runs]) for m in METRICS]
        per_seed = " / ".join(f"{r['mAP']:.2f}" for r in runs)
        gap = (
            " / ".join(f"{r['mAP'] - by['baseline', s]['mAP']:+.2f}" for r, s in zip(runs, seeds))
            if "baseline" in done
            else ""
        )
        w = runs[0]["head_weights"]
        head.append(
            f"| {row} | {ROW_NOTES[row]} | {f'{w / 1e6:.2f}M' if w >= 10_000 else f'{w:,}'} | "
            + " | ".join(cells)
            + f" | {per_seed} | {gap} | {np.mean([r['seconds'] for r in runs]):.0f} |"
        )
    split = [
        "| row | " + " | ".join(f"{m} {s}" for s in SPLITS for m in METRICS) + " |",
        "|---|" + "---|" * (len(SPLITS) * len(METRICS)),
    ]
    for row in done:
        runs = [by[row, s] for s in seeds]
        split.append(
            f"| {row} | "
            + " | ".join(mean_std([r["splits"][s][m] for r in runs]) for s in SPLITS for m in METRICS)
            + " |"
        )
    return "\n".join(head) + "\n\n" + "\n".join(split) + "\n"


def seed_spread(records: list[dict], seeds: list[int], settings: dict, command: str) -> dict:
    """What `msrn demo` quotes: MSRN's and the baseline's per-seed figures from this run."""
    by = {(r["row"], r["seed"]): r for r in records}
    return {
        "command": command, "date": date.today().isoformat(), "seeds": list(seeds), "settings": settings,
        "runs": {row: {m: [round(by[row, s][m], 4) for s in seeds] for m in METRICS} for row in ("msrn", "baseline")},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablation", help="folder for the data, the runs and table.md")
    p.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (--quick: 0 1)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), help="default: every row")
    p.add_argument("--epochs", type=int, help="override the scenes preset's epoch count")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes per run")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own process with one thread (loading in that process)",
    )
    p.add_argument("--quick", action="store_true", help="tiny data and one epoch: checks the script in seconds")
    p.add_argument(
        "--record",
        action="store_true",
        help=f"write the seed spread of msrn and baseline to --out/{SEED_SPREAD.name} (the file msrn "
        "demo quotes, once copied into msrn/)",
    )
    args = p.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    seeds = args.seeds or list(settings.pop("seeds"))
    settings.pop("seeds", None)
    rows = args.rows or list(ROWS)
    if args.record and not {"msrn", "baseline"} <= set(rows):
        p.error("--record needs the msrn and baseline rows")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "runs.json"
    records = json.loads(log_path.read_text()) if log_path.is_file() else []
    if records and records[0].get("settings") != settings:
        p.error(f"{log_path} holds runs with other settings; use another --out")
    have = {(r["row"], r["seed"]) for r in records}
    weights = {row: head_weights(*ROWS[row]) for row in rows}
    todo = [(row, seed) for seed in seeds for row in rows if (row, seed) not in have]
    for seed in sorted({s for _, s in todo}):
        data_for(seed, out, settings)  # before any run, so parallel runs never generate the same folder

    def done(record: dict) -> None:
        record.update(head_weights=weights[record["row"]], settings=settings)
        records.append(record)
        atomic_write_json(log_path, records)
        print(
            f"{record['row']:<20} seed {record['seed']}: mAP {record['mAP']:.2f} CF1 {record['CF1']:.2f} "
            f"OF1 {record['OF1']:.2f} ({record['seconds']:.0f} s training)",
            flush=True,
        )

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, row, seed, out, settings, 0, 1) for row, seed in todo]
            for future in as_completed(futures):
                done(future.result())
    else:
        for row, seed in todo:
            done(run_one(row, seed, out, settings, args.workers))
    text = tables(records, rows, seeds)
    atomic_write_text(out / "table.md", text)
    print(text)
    if args.record:
        command = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        atomic_write_json(out / SEED_SPREAD.name, seed_spread(records, seeds, settings, command))
        print(
            f"seed spread recorded in {out / SEED_SPREAD.name}; copy it to msrn/{SEED_SPREAD.name} to ship it "
            "with msrn demo"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
