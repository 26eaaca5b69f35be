"""benchmarks/ablation.py: every row trains and the table has the rows and columns it promises (--quick)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ablation(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # importable by name, so --jobs' processes find it too
    return importlib.import_module("ablation")


def test_quick_run_writes_the_table(ablation, tmp_path: Path) -> None:
    shipped = ablation.SEED_SPREAD.read_bytes()  # msrn/seed_spread.json, which msrn demo quotes
    out = tmp_path / "abl"
    assert ablation.main(["--quick", "--out", str(out), "--workers", "0", "--record"]) == 0
    assert ablation.SEED_SPREAD.read_bytes() == shipped  # --record writes to --out, never into the package
    record = out / "seed_spread.json"
    runs = json.loads((out / "runs.json").read_text())
    assert {(r["row"], r["seed"]) for r in runs} == {(row, s) for row in ablation.ROWS for s in (0, 1)}
    overall, by_split = (out / "table.md").read_text().strip().split("\n\n")
    lines = overall.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "row",
        "what",
        "head weights",
        "mAP",
        "CF1",
        "OF1",
        "mAP per seed",
        "mAP - baseline per seed",
        "s per run",
    ]
    assert [line.split("|")[1].strip() for line in lines[2:]] == list(ablation.ROWS)
    assert all(line.count(" ± ") == 3 for line in lines[2:])
    assert lines[2].split("|")[8].strip() == "+0.00 / +0.00"  # the baseline against itself
    header = [c.strip() for c in by_split.splitlines()[0].strip("|").split("|")]
    assert header[0] == "row" and len(header) == 1 + 5 * 3 and "mAP small" in header and "OF1 ambiguous" in header
    assert len(by_split.splitlines()) == 2 + len(ablation.ROWS)
    spread = json.loads(record.read_text())
    assert spread["seeds"] == [0, 1] and set(spread["runs"]) == {"msrn", "baseline"}
    assert spread["runs"]["msrn"]["mAP"] == [round(r["mAP"], 4) for r in runs if r["row"] == "msrn"]
    before = (out / "runs.json").read_text()
    assert ablation.main(["--quick", "--out", str(out), "--workers", "0", "--rows", "msrn", "baseline"]) == 0
    assert (out / "runs.json").read_text() == before  # every run was there already: nothing retrained


def test_parallel_runs_give_the_same_records(ablation, tmp_path: Path) -> None:
    args = ["--quick", "--seeds", "0", "--rows", "baseline", "msrn", "--workers", "0"]
    assert ablation.main([*args, "--out", str(tmp_path / "one")]) == 0
    assert ablation.main([*args, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    one, two = (
        sorted(json.loads((tmp_path / d / "runs.json").read_text()), key=lambda r: r["row"]) for d in ("one", "two")
    )
    for a, b in zip(one, two, strict=True):
        assert (a["row"], a["seed"]) == (b["row"], b["seed"])
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-4)  # one thread or two: the same run, to rounding
