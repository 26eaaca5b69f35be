"""benchmarks/bench_model.py's report: the ratios and per-image slopes it prints are the documented ones."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _r(variant, mode, batch, times, cpu, peak, saved=0):
    median = sorted(times)[len(times) // 2]
    return dict(
        variant=variant,
        mode=mode,
        batch=batch,
        times=times,
        min=min(times),
        median=median,
        cpu=cpu,
        peak_growth=peak,
        saved=saved,
    )


def test_report_ratios_and_per_image_slopes(bench):
    results = [
        _r("backbone", "infer", 2, [1.0, 1.2], 2.0, 1e9),
        _r("msrn", "infer", 2, [1.5, 1.1], 2.6, 1.2e9),
        _r("backbone", "infer", 4, [2.0], 4.0, 1.4e9),
        _r("msrn", "infer", 4, [2.2], 4.4, 1.8e9),
        _r("backbone", "train", 2, [3.0], 6.0, 2e9, saved=1.0e9),
        _r("msrn", "train", 2, [4.0], 8.0, 3e9, saved=2.0e9),
        _r("backbone", "train", 4, [6.0], 12.0, 3e9, saved=2.0e9),
        _r("msrn", "train", 4, [7.5], 15.0, 4.2e9, saved=3.1e9),
    ]
    text = bench._report(results, [2, 4])
    rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in text.splitlines() if line.startswith("|")}
    # time: best wall over best wall, CPU over CPU
    assert ("msrn", "infer", "2", "1.10", "1.10", "1.50", "2.60", "1.30", "1.20") in rows
    assert ("msrn", "train", "4", "7.50", "1.25", "7.50", "15.00", "1.25", "4.20") in rows
    # peak growth per extra image: (peak at 4 - peak at 2) / 2, then over the backbone's
    assert ("msrn", "infer", "0.300", "1.50") in rows  # (1.8 - 1.2) / 2 = 0.3 against (1.4 - 1.0) / 2 = 0.2
    assert ("msrn", "train", "0.600", "1.20") in rows
    # saved for backward per extra image: (3.1 - 2.0) / 2 = 0.55 against 0.5
    assert ("msrn", "0.550", "1.10") in rows
