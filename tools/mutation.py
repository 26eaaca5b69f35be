"""Curated mutation check: break one important behaviour at a time and see whether its tests notice.

Each mutation names a file, an exact snippet of it (which must occur exactly once), its replacement (a small,
realistic bug) and the tests that must fail on it. The script copies the working tree to a temporary folder,
runs every listed test once unmutated (they must pass), then applies each mutation in turn, runs its tests
and restores the file. A mutation is killed when a test fails, survived when all pass. A snippet that is no
longer found exactly once, a test id that no longer exists, or a failing unmutated run stops the check with
one line naming it: the catalogue must follow the code, never silently count a moved snippet as killed.

    python tools/mutation.py                 # all of them (TESTING.md has the latest result and its time)
    python tools/mutation.py --only io-folder-not-synced trainer-loss-targets-clamped
    python tools/mutation.py --check         # only that every snippet is still found exactly once
    python tools/mutation.py --list
    python tools/mutation.py --json /tmp/mutation.json

Exit status: 0 all killed, 1 some survived, 2 the catalogue no longer matches the code or the tests.
Run before a release, not in CI (it takes minutes). TESTING.md says how to add a mutation.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # one mutation's tests; a mutant that hangs them counts as killed (reported as a timeout)


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids or test files, run with -m "not slow"
    why: str  # the behaviour it breaks


MUTATIONS: tuple[Mutation, ...] = (
    # ---- the six survivors of the issue-33 audit (each has a test now)
    Mutation(
        "trainer-loss-targets-clamped",
        "msrn/engine/trainer.py",
        "targets = targets.to(self.device, non_blocking=True)\n",
        "targets = targets.to(self.device, non_blocking=True).clamp(min=0)\n",
        ("tests/test_train_extras.py::test_training_with_unknown_entries_uses_only_known_ones",),
        "unknown (-2) and difficult (-1) entries reach the loss as negatives",
    ),
    Mutation(
        "trainer-tuned-thresholds-dropped",
        "msrn/engine/selection.py",
        "score_metrics(tlogits, test_data.targets, thresholds, group_loss, criterion)",
        "score_metrics(tlogits, test_data.targets, None, group_loss, criterion)",
        ("tests/test_engine.py::test_validation_split_selects_and_tunes_thresholds",),
        "the test figures at the thresholds tuned on validation vanish",
    ),
    Mutation(
        "resume-forgets-best",
        "msrn/engine/trainer.py",
        'self.history, self.best = list(s["history"]), Selected.from_dict(s["best"])',
        'self.history, self.best = list(s["history"]), None',
        ("tests/test_engine.py::test_a_resumed_run_keeps_the_best_epoch_from_before_the_resume",),
        "a resumed run counts its first epoch as an improvement and overwrites best.pt",
    ),
    Mutation(
        "io-temp-file-not-synced",
        "msrn/io.py",
        "            handle.flush()\n            os.fsync(handle.fileno())\n",
        "",
        ("tests/test_io.py",),
        "a power loss after the rename can leave an empty or partial file",
    ),
    Mutation(
        "io-folder-not-synced",
        "msrn/io.py",
        "        raise\n    _fsync_folder(folder)\n",
        "        raise\n",
        ("tests/test_io.py",),
        "a power loss can lose the rename itself",
    ),
    Mutation(
        "reference-module-prefix-kept",
        "msrn/models/_reference_layout.py",
        'state = {str(k).removeprefix("module."): v for k, v in state.items()}',
        "state = {str(k): v for k, v in state.items()}",
        ("tests/test_checkpoint.py::test_reference_checkpoint_saved_under_data_parallel_loads",),
        "a reference checkpoint saved under DataParallel/DDP is refused",
    ),
    # ---- the audit's caught ones
    Mutation(
        "attention-fused-default-scale",
        "msrn/models/attention.py",
        "F.scaled_dot_product_attention(q, kv, kv, scale=1.0)",
        "F.scaled_dot_product_attention(q, kv, kv)",
        ("tests/test_attention.py::test_fused_matches_naive_float64", "tests/test_attention.py::test_fused_gradcheck"),
        "the fused form scales the scores by 1/sqrt(head dim)",
    ),
    Mutation(
        "attention-tiled-forward-drops-mean",
        "msrn/models/attention.py",
        "return (vc.view(b, d, m) + mu).permute(0, 2, 1)",
        "return vc.view(b, d, m).permute(0, 2, 1)",
        ("tests/test_attention.py::test_matches_naive_float32",),
        "the tiled form returns the centred output",
    ),
    Mutation(
        "attention-tiled-backward-wrong-moment",
        "msrn/models/attention.py",
        "grad_sem = (g * var).view(b, d, m).sum(0).t()",
        "grad_sem = (g * vc).view(b, d, m).sum(0).t()",
        ("tests/test_attention.py::test_matches_naive_float64_gradcheck",),
        "the tiled form's closed-form gradient of the semantics is wrong",
    ),
    Mutation(
        "metrics-ap-ranks-unknown-as-negative",
        "msrn/metrics.py",
        "neg = (t == 0).astype(np.float64)",
        "neg = ((t == 0) | (t == UNKNOWN)).astype(np.float64)",
        ("tests/test_partial_labels.py::test_ap_leaves_unknown_entries_out_of_the_ranking",),
        "unknown entries enter the AP ranking as negatives",
    ),
    Mutation(
        "io-stale-temp-pattern-too-broad",
        "msrn/io.py",
        r'_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")',
        r'_TEMP_NAME = re.compile(r"\..+\.tmp")',
        ("tests/test_io.py",),
        "a resume deletes a user's own .NAME.tmp files",
    ),
    Mutation(
        "heads-elementwise-keeps-mlp-keys",
        "msrn/models/_reference_layout.py",
        '"elementwise": ("resnet_101.conv_buffer0.", "fc1.", "fc2.", "ProjectMs."),',
        '"elementwise": ("resnet_101.conv_buffer0.", "ProjectMs."),',
        ("tests/test_heads.py::test_reference_checkpoint_w_and_b_load_into_the_elementwise_head",),
        "a reference checkpoint no longer loads into the element-wise head",
    ),
    Mutation(
        "serve-token-any-scheme",
        "msrn/inference/serving/routes.py",
        "return hmac.compare_digest(given.strip().encode(), token.encode()) and ok_scheme",
        "return hmac.compare_digest(given.strip().encode(), token.encode())",
        ("tests/test_serve.py::test_token_guards_every_route_but_the_page_and_healthz",),
        "any scheme (Basic TOKEN, TOKEN TOKEN) passes the token check",
    ),
    Mutation(
        "serve-token-open-routes-by-prefix",
        "msrn/inference/serving/routes.py",
        "and request.path not in OPEN_ROUTES",
        "and not request.path.startswith(OPEN_ROUTES)",
        ("tests/test_serve.py::test_token_guards_every_route_but_the_page_and_healthz",),
        'every route starts with "/": all of them open without the token',
    ),
    Mutation(
        "safe-pickle-allows-builtins",
        "msrn/safe_pickle.py",
        "if (module, name) in _ALLOWED:",
        'if (module, name) in _ALLOWED or module == "builtins":',
        ("tests/test_safe_pickle.py::test_code_carrying_pickles_are_refused",),
        "a reference .pkl may call eval/exec while it loads",
    ),
    Mutation(
        "hub-sha256-not-checked",
        "msrn/hub.py",
        "            file_sha256(path) == sha256,\n",
        "            True,\n",
        ("tests/test_hub.py::test_altered_weights_are_refused",),
        "altered or swapped model.safetensors load",
    ),
    # ---- the weak tests of issue 33, each run on the bug it used to miss
    Mutation(
        "metrics-cf1-as-mean-seen-by-evaluate",
        "msrn/metrics.py",
        "values = (cp, cr, float(_f1(cp, cr)), op, orec, float(_f1(op, orec)))",
        "values = (cp, cr, (cp + cr) / 2, op, orec, float(_f1(op, orec)))",
        (
            "tests/test_engine.py::test_evaluate_reproduces_the_run_metrics",
            "tests/test_train_extras.py::test_evaluate_writes_every_images_probabilities",
        ),
        "CF1 is the mean of CP and CR, not their F1 (the evaluation tests recomputed it with msrn.metrics)",
    ),
    Mutation(
        "metrics-ap-precision-inside-tie-groups",
        "msrn/metrics.py",
        "precision = _ratio(tp_end, tp_end + fp_end)",
        "precision = _ratio(tp, tp + fp)",
        ("tests/test_metrics.py::test_subset_metrics_keep_some_positives_against_every_negative",),
        "tied scores get the precision of whichever order the sort returns",
    ),
    Mutation(
        "architecture-top-layer-matches-everything",
        "tests/test_architecture.py",
        'if module == prefix or (prefix != "msrn" and module.startswith(prefix + "."))',
        'if module == prefix or module.startswith(prefix + ".")',
        ("tests/test_architecture.py",),
        "an unlisted module lands in the top layer and its imports are never checked",
    ),
    # ---- more of the critical modules
    Mutation(
        "metrics-unknown-counted-as-predicted",
        "msrn/metrics.py",
        "predicted = (_probabilities(scores, scores_are_logits) >= threshold) & known\n",
        "predicted = _probabilities(scores, scores_are_logits) >= threshold\n",
        ("tests/test_partial_labels.py::test_unknown_is_not_a_false_positive_but_difficult_is",),
        "an unknown entry scored high counts as a false positive",
    ),
    Mutation(
        "metrics-tuned-threshold-lowest-not-nearest-half",
        "msrn/metrics.py",
        "distance = np.where(best, np.abs(grid_arr - 0.5)[:, None], np.inf)",
        "distance = np.where(best, grid_arr[:, None], np.inf)",
        ("tests/test_metrics.py::test_per_label_thresholds",),
        "among equally good thresholds the lowest wins, not the one nearest 0.5",
    ),
    Mutation(
        "losses-unknown-entries-trained",
        "msrn/engine/losses.py",
        "known = targets != UNKNOWN\n",
        "known = torch.ones_like(targets, dtype=torch.bool)\n",
        ("tests/test_losses.py::test_unknown_entries_are_left_out_and_difficult_counts_positive",),
        "unknown entries enter the loss",
    ),
    Mutation(
        "losses-difficult-trained-negative",
        "msrn/engine/losses.py",
        "positive = (known & (targets != NEGATIVE)).float()",
        "positive = (targets > NEGATIVE).float()",
        ("tests/test_losses.py::test_unknown_entries_are_left_out_and_difficult_counts_positive",),
        "difficult entries train as negatives, not positives as in the reference",
    ),
    Mutation(
        "checkpoint-best-without-thresholds",
        "msrn/engine/trainer.py",
        '            ckpt["thresholds"] = torch.tensor(self.best.thresholds, dtype=torch.float32)\n',
        "            pass\n",
        ("tests/test_engine.py::test_validation_split_selects_and_tunes_thresholds",),
        "best.pt loses the tuned thresholds that predict should apply",
    ),
    Mutation(
        "checkpoint-loads-pickled-code",
        "msrn/checkpoint.py",
        'torch.load(path, map_location="cpu", weights_only=True)',
        'torch.load(path, map_location="cpu", weights_only=False)',
        ("tests/test_security.py::test_load_model_refuses_code_carrying_checkpoint",),
        "a checkpoint may run code while it loads",
    ),
    Mutation(
        "io-failed-write-leaves-temp",
        "msrn/io.py",
        "        try:\n            os.remove(tmp)\n",
        "        try:\n            pass\n",
        ("tests/test_io.py",),
        "a failed write leaves its temporary file behind",
    ),
    Mutation(
        "reference-conv-buffer-mapped-into-backbone",
        "msrn/models/_reference_layout.py",
        'out[rename_key(key.removeprefix("resnet_101."))] = value',
        'out["backbone." + key.removeprefix("resnet_101.")] = value',
        ("tests/test_checkpoint.py::test_reference_checkpoint_saved_under_data_parallel_loads",),
        "the reference's conv_buffer1/2 land under backbone.* and the load fails",
    ),
    Mutation(
        "heads-elementwise-drops-bias",
        "msrn/models/heads.py",
        "return (self.W * torch.tanh(labels)).sum(-1) + self.B",
        "return (self.W * torch.tanh(labels)).sum(-1)",
        ("tests/test_heads.py::test_elementwise_head_matches_the_reference_block_forward_and_gradients",),
        "the element-wise head ignores its per-label bias B",
    ),
    Mutation(
        "heads-mlp-relu-for-leaky",
        "msrn/models/heads.py",
        "F.leaky_relu(self.fc1(h), 0.01)",
        "F.relu(self.fc1(h))",
        ("tests/test_heads.py::test_mlp_head_matches_the_independent_mlp_forward_and_gradients",),
        "the MLP head's activation differs from the reference's LeakyReLU(0.01)",
    ),
)


class CatalogueError(Exception):
    """The catalogue no longer matches the code or the tests: fix the entry, do not count it."""


def mutated_source(m: Mutation, root: Path) -> tuple[str, str]:
    """(original text, mutated text) of m's file under root; CatalogueError unless the snippet occurs once and
    the mutated file still parses (a syntax error would 'kill' any mutant)."""
    path = root / m.file
    if not path.is_file():
        raise CatalogueError(f"{m.name}: {m.file} does not exist")
    text = path.read_text()
    count = text.count(m.original)
    if count != 1:
        raise CatalogueError(
            f"{m.name}: its snippet occurs {count} times in {m.file} (must be exactly once): {m.original.strip()!r}"
        )
    new = text.replace(m.original, m.replacement)
    try:
        ast.parse(new, m.file)
    except SyntaxError as e:
        raise CatalogueError(f"{m.name}: the mutated {m.file} does not parse ({e.msg}, line {e.lineno})") from None
    return text, new


def copy_tree(dest: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) copied under dest."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def pytest(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str, float]:
    """Run the tests in tree: (exit status or None on timeout, the output, seconds)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-m", "not slow"]
    cmd += ["--hypothesis-seed=0", *tests]  # the same examples every run: a result can be reproduced
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", time.perf_counter() - start
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def first_failure(output: str) -> str:
    """The first FAILED/ERROR line of pytest's short summary, shortened."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:160]
    return ""


def run_one(m: Mutation, tree: Path) -> dict:
    """Apply m in tree, run its tests, restore the file; the outcome as a dict."""
    original, mutated = mutated_source(m, tree)
    path = tree / m.file
    path.write_text(mutated)
    try:
        status, output, seconds = pytest(tree, m.tests, TIMEOUT_S)
    finally:
        path.write_text(original)
    if status is None:
        outcome, detail = "killed", f"timeout after {TIMEOUT_S}s"
    elif status == 0:
        outcome, detail = "survived", ""
    elif status in (1, 2):  # a failing test, or the mutant broke collection (the unmutated run collected)
        outcome, detail = "killed", first_failure(output) or output.strip().splitlines()[-1][:160]
    else:  # 3: internal error, 4: usage (a test id not found), 5: nothing collected
        raise CatalogueError(f"{m.name}: pytest exited {status}: {output.strip().splitlines()[-1][:200]}")
    return {"name": m.name, "file": m.file, "outcome": outcome, "seconds": round(seconds, 1), "detail": detail}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    p.add_argument("--check", action="store_true", help="only check that every snippet is found exactly once")
    p.add_argument("--list", action="store_true", help="list the mutations")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        print("mutation: two mutations share a name", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        print(f"mutation: no mutation named {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:48} {m.file:34} {m.why}")
        return 0
    try:
        for m in chosen:
            mutated_source(m, ROOT)
        if args.check:
            print(f"mutation: all {len(chosen)} snippets found exactly once")
            return 0
        return run(chosen, args.json)
    except CatalogueError as e:
        print(f"mutation: CATALOGUE OUT OF DATE: {e}", file=sys.stderr)
        return 2


def run(chosen: list[Mutation], report: Path | None) -> int:
    """Baseline, then every chosen mutation; prints a table and returns the exit status."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msrn-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        where = subprocess.run(
            [sys.executable, "-c", "import msrn; print(msrn.__file__)"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(tree)):
            raise CatalogueError(f"the copy's tests would import msrn from {where or '?'}, not from {tree}")
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        status, output, seconds = pytest(tree, tests, 4 * TIMEOUT_S)
        if status != 0:
            tail = first_failure(output) or (output.strip().splitlines() or ["timeout"])[-1]
            raise CatalogueError(f"the unmutated tests do not pass (exit {status}): {tail}")
        print(f"unmutated: {len(tests)} test selections pass ({seconds:.0f}s)", flush=True)
        results = []
        for m in chosen:
            r = run_one(m, tree)
            results.append(r)
            print(f"{r['outcome']:9} {r['seconds']:6.1f}s  {m.name}  {r['detail']}", flush=True)
    total = time.perf_counter() - start
    survived = [r for r in results if r["outcome"] == "survived"]
    print(f"\n{len(results) - len(survived)} killed, {len(survived)} survived, {total / 60:.1f} min in all")
    for r in survived:
        why = next(m.why for m in chosen if m.name == r["name"])
        print(f"  survived: {r['name']} ({why})")
    if report is not None:
        report.write_text(json.dumps({"results": results, "minutes": round(total / 60, 1)}, indent=2) + "\n")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
