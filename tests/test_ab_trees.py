"""benchmarks/ab_trees.py's arithmetic: ratios to the same run's reference, and a change shown only where the two
trees' ranges over the rounds do not overlap."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("ab_trees", ROOT / "benchmarks" / "ab_trees.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ratios_divide_by_the_same_runs_reference_in_the_same_mode_and_batch(ab) -> None:
    rows = [
        dict(variant="backbone", mode="infer", batch=2, cpu=2.0),
        dict(variant="msrn", mode="infer", batch=2, cpu=2.5),
        dict(variant="backbone", mode="infer", batch=4, cpu=4.0),
        dict(variant="msrn", mode="infer", batch=4, cpu=3.0),
        dict(variant="msrn", mode="train", batch=2, cpu=9.0),  # no backbone row to divide by: left out
    ]
    assert ab.ratios(rows, "cpu", "backbone") == {("msrn", "infer", 2): 1.25, ("msrn", "infer", 4): 0.75}


def test_a_change_is_shown_only_where_the_ranges_do_not_overlap(ab) -> None:
    key, other = ("msrn", "infer", 2), ("msrn", "infer", 4)
    runs = {
        "old": [{key: 1.06, other: 1.30}, {key: 1.19, other: 1.32}, {key: 1.10, other: 1.31}],
        "new": [{key: 1.20, other: 1.01}, {key: 1.07, other: 1.03}, {key: 1.12, other: 0.99}],
    }
    rows = ab.summary(runs).splitlines()[2:]
    assert rows == [
        "| msrn | infer | 2 | 1.06x, 1.19x, 1.10x | 1.06-1.19x | 1.20x, 1.07x, 1.12x | 1.07-1.20x "
        "| no (the ranges overlap) |",
        "| msrn | infer | 4 | 1.30x, 1.32x, 1.31x | 1.30-1.32x | 1.01x, 1.03x, 0.99x | 0.99-1.03x | yes: new lower |",
    ]
