"""Several processes at once: generating one data set (torchrun's ranks, two runs on one fresh folder), and
one run folder (a second `msrn train` there is refused while the first lives, and not after it was killed)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_helpers import noise_csv, tiny_train_args

from msrn.checkpoint import read_checkpoint
from msrn.data import ensure_scenes, ensure_synthetic
from msrn.errors import MSRNError

SMALL = {"num_train": 40, "num_test": 12}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TIMEOUT = 240


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def generate_together(ensure: str, root: str, start: multiprocessing.synchronize.Barrier) -> None:
    """A child process: wait for the others, then generate into root; exit 2 on an MSRNError (as the CLI)."""
    start.wait()
    try:
        {"synthetic": ensure_synthetic, "scenes": ensure_scenes}[ensure](Path(root), **SMALL)
    except MSRNError as e:
        print(e, file=sys.stderr)
        sys.exit(2)


@pytest.mark.parametrize("ensure", ["synthetic", "scenes"])
def test_processes_generating_into_one_fresh_folder_all_succeed_with_the_same_data(
    ensure: str, tmp_path: Path
) -> None:
    """Three processes released at once on one fresh folder (before the lock, all but one failed on the
    generation marker the first one removed)."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=generate_together, args=(ensure, str(tmp_path / "shared"), start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    alone = {"synthetic": ensure_synthetic, "scenes": ensure_scenes}[ensure](tmp_path / "alone", **SMALL)
    assert tree_bytes(tmp_path / "shared") == tree_bytes(alone)
    # beside the data: its lock file and the one-process generation's, no private folder left over
    assert sorted(p.name for p in tmp_path.iterdir()) == [".alone.msrn-lock", ".shared.msrn-lock", "alone", "shared"]


def test_a_generation_killed_half_way_leaves_no_half_set(tmp_path: Path) -> None:
    """SIGKILL while the images are drawn: the folder does not exist yet (nobody reads half a set), and
    the next call generates it whole and removes the killed one's private folder."""
    root = tmp_path / "data"
    child = multiprocessing.get_context("fork").Process(
        target=ensure_synthetic, args=(root,), kwargs={"num_train": 3000, "num_test": 10}
    )
    child.start()
    deadline = time.monotonic() + TIMEOUT
    while not list(tmp_path.glob(".data.*.msrn-tmp/images/train/00010.png")):
        assert child.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not root.exists()
    assert tree_bytes(ensure_synthetic(root, **SMALL)) == tree_bytes(ensure_synthetic(tmp_path / "b", **SMALL))
    assert not list(tmp_path.glob("*.msrn-tmp"))
