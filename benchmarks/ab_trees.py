"""One benchmark command on two git trees, in interleaved rounds, with each tree's ratios side by side.

    python benchmarks/ab_trees.py --base f5ccb70 --head main --rounds 3 -- \\
        python benchmarks/bench_model.py --quick --modes infer --variants backbone msrn

Each tree is checked out as a detached worktree in a temporary folder (removed at the end); round r runs the
command in the base tree then the head tree, and the next round in the other order, so that a drift in the
machine's load falls on both alike. The command runs from the tree's root with that tree on PYTHONPATH, and
writes its raw results with `--json FILE` (appended unless the command names `{json}` itself): a JSON object
whose "results" rows carry the keys and the metric, as benchmarks/bench_model.py writes them.

Each row's metric (CPU time by default) is divided by the same run's row of the reference variant (the bare
backbone), so a ratio compares two processes of one run; the table gives, per tree, every round's ratio and their
range, and says whether the ranges overlap: a change is shown only where they do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("variant", "mode", "batch")  # what names a row of bench_model's results


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def ratios(results: list[dict], metric: str, reference: str) -> dict[tuple, float]:
    """Each row's metric over the reference variant's in the same mode and batch: (variant, mode, batch) -> ratio."""
    rows = {tuple(r[k] for k in KEYS): r[metric] for r in results}
    return {
        key: value / rows[(reference, *key[1:])]
        for key, value in rows.items()
        if key[0] != reference and rows.get((reference, *key[1:]))
    }


def summary(runs: dict[str, list[dict[tuple, float]]]) -> str:
    """A markdown table: per row, each tree's ratios over the rounds, their range, and whether the ranges overlap."""
    (a, a_runs), (b, b_runs) = runs.items()
    keys = [k for k in a_runs[0] if all(k in run for run in a_runs + b_runs)]
    lines = [
        f"| variant | mode | batch | {a}: rounds | {a}: range | {b}: rounds | {b}: range | change shown |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        xs, ys = [run[key] for run in a_runs], [run[key] for run in b_runs]
        if max(xs) < min(ys):
            verdict = f"yes: {b} higher"
        elif max(ys) < min(xs):
            verdict = f"yes: {b} lower"
        else:
            verdict = "no (the ranges overlap)"
        cells = [", ".join(f"{x:.2f}x" for x in v) + f" | {min(v):.2f}-{max(v):.2f}x" for v in (xs, ys)]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {cells[0]} | {cells[1]} | {verdict} |")
    return "\n".join(lines)


def run_once(tree: Path, command: Sequence[str], out: Path) -> list[dict]:
    """The command's results in `tree`: run from its root with its code first on PYTHONPATH."""
    words = [w.replace("{json}", str(out)) for w in command]
    if not any("{json}" in w for w in command):
        words += ["--json", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(words, cwd=tree, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"ab_trees: {' '.join(words)} failed in {tree}:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())["results"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the tree compared against: a commit, branch or tag")
    p.add_argument("--head", default="HEAD", help="the tree measured (default HEAD, this checkout's commit)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per tree (default 3; at least 3)")
    p.add_argument("--metric", default="cpu", help="the results' field to compare (default cpu; min: wall time)")
    p.add_argument("--reference", default="backbone", help="the variant every ratio divides by (default backbone)")
    p.add_argument("--json", type=Path, help="also write every round's ratios here")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the benchmark command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the benchmark command after --")
    if args.rounds < 1:
        p.error("--rounds must be at least 1 (3 or more for a figure to report)")
    names = {"base": args.base, "head": args.head}
    commits = {name: git("rev-parse", "--short", rev) for name, rev in names.items()}
    print(f"# {' '.join(command)}", flush=True)
    print(f"# base {args.base} ({commits['base']}), head {args.head} ({commits['head']}), {args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="ab_trees-") as tmp:
        trees = {name: Path(tmp) / name for name in names}
        try:
            for name, tree in trees.items():
                git("worktree", "add", "--detach", str(tree), commits[name])
            runs: dict[str, list[dict[tuple, float]]] = {names["base"]: [], names["head"]: []}
            for rnd in range(args.rounds):
                order = ("base", "head") if rnd % 2 == 0 else ("head", "base")
                for name in order:
                    results = run_once(trees[name], command, Path(tmp) / f"{name}-{rnd}.json")
                    runs[names[name]].append(ratios(results, args.metric, args.reference))
                    shown = ", ".join(f"{'/'.join(map(str, k))} {v:.2f}x" for k, v in runs[names[name]][-1].items())
                    print(f"round {rnd} {name} ({names[name]}): {shown}; load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            for tree in trees.values():
                if tree.exists():
                    git("worktree", "remove", "--force", str(tree))
    print()
    print(f"{args.metric} as a ratio to the same run's {args.reference}:")
    print(summary(runs))
    if args.json:
        rows = {tree: [{"/".join(map(str, k)): v for k, v in run.items()} for run in rs] for tree, rs in runs.items()}
        args.json.write_text(json.dumps(dict(command=command, commits=commits, ratios=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
