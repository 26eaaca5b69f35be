"""Does a finished torchrun job exit? Runs a 2-process `msrn train` job RUNS times and counts the jobs
that outlived their work: torchrun still alive GRACE seconds after rank 0 printed its `done:` line.

On a cluster such a job holds its GPUs until the time limit. Each job trains msrn_tiny for one epoch
on 16 noise images (gloo, CPU, one thread per process). With --compare-with DIR the same job also runs
from the msrn checkout in DIR (e.g. `git worktree add /tmp/old main`), interleaved with this tree.

    python benchmarks/bench_ddp_exit.py                   # 20 jobs, about 15 s each on 2 cores
    python benchmarks/bench_ddp_exit.py --runs 3 --json exit.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_data(folder: Path) -> Path:
    """16 train and 6 test noise images of 32 px with 1-3 of 4 labels, listed in folder/data.csv."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = ["image,labels,split"]
    for i in range(22):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        labels = "|".join(sorted(rng.choice(list("abcd"), size=rng.integers(1, 4), replace=False)))
        rows.append(f"img/{i}.png,{labels},{'train' if i < 16 else 'test'}")
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


def run_job(tree: Path, data: Path, out: Path, grace: float, limit: float) -> dict:
    """One job from `tree`: seconds to rank 0's done line and to torchrun's exit; killed (with everything it
    started) when it outlives the done line by `grace` seconds, or runs `limit` seconds in all."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "msrn"]
    cmd += ["train", "--dataset", "csv", "--data", str(data), "--out", str(out), "--model", "msrn_tiny"]
    cmd += ["--pretrained", "none", "--image-size", "64", "--workers", "0", "--epochs", "1", "--batch-size", "4"]
    cmd += ["--val-fraction", "0", "--save-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # `-m msrn` imports the msrn in `tree` (the working folder comes first)
    t0 = time.monotonic()
    job = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    done: list[float] = []
    tail: list[str] = []

    def read() -> None:
        for line in job.stdout:  # type: ignore[union-attr]
            tail[:] = [*tail[-20:], line]
            if line.startswith("done:") and not done:
                done.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    outlived = False
    while job.poll() is None:
        now = time.monotonic()
        if (done and now - done[0] > grace) or now - t0 > limit:
            outlived = bool(done)
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
            break
        time.sleep(0.02)
    end = time.monotonic()
    reader.join(5)
    result = {"status": job.returncode, "outlived": outlived, "total_s": round(end - t0, 2)}
    if done:
        result.update(done_s=round(done[0] - t0, 2), exit_lag_s=round(end - done[0], 2))
    else:
        result["tail"] = "".join(tail)
    return result


def summary(name: str, jobs: list[dict], grace: float) -> str:
    lags = [j["exit_lag_s"] for j in jobs if "exit_lag_s" in j]
    failed = sum(1 for j in jobs if "exit_lag_s" not in j)
    outlived = sum(j["outlived"] for j in jobs)
    lag = f"exit lag after the done line median {statistics.median(lags):.2f} s, max {max(lags):.2f} s" if lags else ""
    return (
        f"{name}: {len(jobs)} jobs, {outlived} outlived their work (alive {grace:g} s after `done:`), "
        f"{failed} never printed `done:`; {lag}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="jobs per tree (default 20)")
    p.add_argument("--grace", type=float, default=20.0, help="seconds after `done:` a job may take to exit")
    p.add_argument("--limit", type=float, default=300.0, help="seconds a job may take in all")
    p.add_argument("--compare-with", type=Path, metavar="DIR", help="an msrn checkout to run the same jobs from")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every job's figures here")
    args = p.parse_args()
    trees = {"this tree": ROOT, **({str(args.compare_with): args.compare_with.resolve()} if args.compare_with else {})}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-exit-") as tmp:
        data = make_data(Path(tmp) / "data")
        for k in range(args.runs):
            for name, tree in trees.items():  # interleaved: the machine's load falls on both alike
                job = run_job(
                    tree, data, Path(tmp) / f"run-{len(results[name])}-{k}-{id(tree)}", args.grace, args.limit
                )
                results[name].append(job)
                print(f"{name} job {k + 1}: {json.dumps({x: v for x, v in job.items() if x != 'tail'})}", flush=True)
                if "tail" in job:
                    print(job["tail"], flush=True)
    for name, jobs in results.items():
        print(summary(name, jobs, args.grace))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if any(j["outlived"] or "exit_lag_s" not in j for j in results["this tree"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
