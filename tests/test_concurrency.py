"""Several processes at once: generating one data set (torchrun's ranks, two runs on one fresh folder), and
one run folder (a second `msrn train` there is refused while the first lives, and not after it was killed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from data_helpers import noise_csv, tiny_train_args

from msrn import distributed
from msrn.checkpoint import read_checkpoint
from msrn.cli import main as cli_main
from msrn.data import ensure_scenes, ensure_synthetic
from msrn.errors import MSRNError
from msrn.io import lock_run_folder

SMALL = {"num_train": 40, "num_test": 12}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TIMEOUT = 240
PIPES: dict = {"env": ENV, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}


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
def test_processes_generating_into_one_fresh_folder_all_succeed_with_the_same_data(ensure: str, tmp_path: Path) -> None:
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


def test_an_existing_folder_is_filled_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty working folder given as `.` is generated into, not renamed away from under the process;
    a generation of another seed there is replaced by this seed's."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ensure_synthetic(Path("."), seed=1, **SMALL)
    assert tree_bytes(work) == tree_bytes(ensure_synthetic(tmp_path / "one", seed=1, **SMALL))
    ensure_synthetic(Path("."), seed=2, **SMALL)
    assert Path.cwd() == work and os.path.samefile(".", work)
    assert tree_bytes(work) == tree_bytes(ensure_synthetic(tmp_path / "two", seed=2, **SMALL))


def hold_lock_until_killed(folder: str, ready: multiprocessing.synchronize.Event) -> None:
    """A child process: hold the run folder's lock, then sleep until killed."""
    lock_run_folder(folder)
    ready.set()
    time.sleep(TIMEOUT)


def test_run_folder_lock_names_its_live_holder_and_dies_with_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=hold_lock_until_killed, args=(str(tmp_path), ready))
    child.start()
    try:
        assert ready.wait(TIMEOUT)
        with pytest.raises(MSRNError) as refused:
            lock_run_folder(tmp_path)
        assert f"{tmp_path} is in use by another msrn run (process {child.pid})" in str(refused.value)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    lock_run_folder(tmp_path).release()  # no stale lock after a SIGKILL


@pytest.mark.slow
def test_second_run_in_a_live_run_folder_is_refused_and_resume_after_a_kill_works(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A live `msrn train` holds its run folder: a second one there is one line naming the folder and the
    first one's PID, and leaves its files alone; after a SIGKILL of the first, --resume goes on."""
    csv = noise_csv(tmp_path, {"train": 24, "test": 6}, size=32)
    out = tmp_path / "run"
    args = tiny_train_args(csv, out, "--save-every", "2", "--val-fraction", "0", batch_size=8, epochs=50)
    first = subprocess.Popen([sys.executable, "-m", "msrn", *args], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "last.pt").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.02)
        log_before = (out / "log.txt").read_text()
        capsys.readouterr()
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        refusal = f"{out} is in use by another msrn run (process {first.pid}): wait for it to end or stop it"
        assert err == [f"msrn train: error: {refusal}, or give another --out"]
        assert (out / "log.txt").read_text().startswith(log_before)  # the refused run logged nothing there
    finally:
        first.kill()  # SIGKILL: no handler runs, nothing is released by msrn
        first.communicate()
    epoch = read_checkpoint(out / "last.pt")["epoch"]
    assert cli_main([*args, "--resume", "--epochs", str(epoch + 1)]) == 0
    assert read_checkpoint(out / "last.pt")["epoch"] == epoch + 1
    assert "resumed at epoch" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_torchrun_and_a_plain_run_started_together_on_one_fresh_synthetic_folder_both_train(tmp_path: Path) -> None:
    """The command of issue 32 (torchrun, 2 processes, a fresh --data) and a plain `msrn train` on the same
    fresh folder at the same moment: three processes generate at once; before the lock all but one failed."""
    data = tmp_path / "synthetic"
    common = ["--dataset", "synthetic", "--data", str(data), "--epochs", "1", "--workers", "0"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "msrn"]
    runs = [
        subprocess.Popen([*ddp, "train", *common, "--out", str(tmp_path / "ddp")], **PIPES),
        subprocess.Popen([sys.executable, "-m", "msrn", "train", *common, "--out", str(tmp_path / "one")], **PIPES),
    ]
    outputs = [run.communicate(timeout=TIMEOUT)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert all("done: best.pt from epoch 1" in output for output in outputs)
    assert not list(tmp_path.glob("*.msrn-tmp"))


def test_a_process_stuck_on_its_way_out_under_a_launcher_exits_within_the_bound(tmp_path: Path) -> None:
    """A command returned, then a thread that never ends keeps the interpreter from exiting: under a launcher
    the process dumps its stacks and exits 1 after EXIT_BOUND_S; without a launcher nothing is armed."""
    script = (
        "import threading, time, msrn.cli as c\n"
        "c.EXIT_BOUND_S = 1\n"
        "c.bound_exit()\n"
        "threading.Thread(target=time.sleep, args=(60,), name='stuck').start()\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], env={**ENV, "WORLD_SIZE": "2"}, capture_output=True, text=True, timeout=50
    )
    assert (done.returncode, time.monotonic() - started < 30) == (1, True)
    assert "Timeout (0:00:01)!" in done.stderr  # faulthandler's stack dump, which says where it was stuck
    alone = {k: v for k, v in ENV.items() if k not in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", script], env=alone, capture_output=True, timeout=5)


def teardown_rank(rank: int, port: int, out: str, stuck: bool) -> None:
    """One of 2 gloo ranks: rank 1, when `stuck`, never reaches teardown; rank 0 records how long teardown
    took and whether the group is still there."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    distributed.setup("cpu")
    if stuck and rank == 1:
        time.sleep(8)
        return
    started = time.monotonic()
    distributed.teardown(timedelta(seconds=2))
    Path(out, f"rank{rank}.json").write_text(json.dumps([time.monotonic() - started, distributed.is_distributed()]))


@pytest.mark.slow
@pytest.mark.parametrize("stuck", [False, True])
def test_teardown_waits_for_every_rank_at_most_its_timeout(tmp_path: Path, stuck: bool) -> None:
    """Both ranks at teardown: both leave the group at once. One rank stuck elsewhere: the other waits 2 s
    (the timeout given), then goes on with the group left as it is, instead of waiting for ever."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(teardown_rank, args=(port, str(tmp_path), stuck), nprocs=2, join=True)
    seconds, still_grouped = json.loads((tmp_path / "rank0.json").read_text())
    if stuck:
        assert (1.9 < seconds < 6, still_grouped) == (True, True)
    else:
        assert (seconds < 2, still_grouped, (tmp_path / "rank1.json").is_file()) == (True, False, True)


@pytest.mark.slow
def test_finished_two_process_jobs_exit(tmp_path: Path) -> None:
    """benchmarks/bench_ddp_exit.py with 3 jobs: each prints rank 0's `done:` line and torchrun exits within
    20 s of it (the benchmark's own exit status says so, its JSON how long each took)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ddp_exit.py"
    cmd = [sys.executable, str(bench), "--runs", "3", "--grace", "20", "--json", str(tmp_path / "exit.json")]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=3 * TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = json.loads((tmp_path / "exit.json").read_text())["this tree"]
    assert [(job["status"], job["outlived"], job["exit_lag_s"] < 20) for job in jobs] == [(0, False, True)] * 3
