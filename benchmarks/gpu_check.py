"""The GPU check of issue 15 in one script; benchmarks/gpu_check.sh runs it (about 5 minutes on one H200).

Steps, each timed and judged PASS or FAIL:
  cuda_tests  the test suite's CUDA-marked tests (pytest -m cuda)
  parity      a random checkpoint in the reference's layout (COCO size: ResNet-101, 80 labels, 448):
              logits on the device against the CPU, fp32 with TF32 off, and both against
              tests/reference_impl.py in float64
  train       a few SGD steps on one fixed batch in fp32, bf16 and fp16 autocast (fp16 with a
              GradScaler, as msrn train): the loss falls, and logits, losses and weights stay finite
  evaluate    msrn train, then msrn evaluate on a small generated synthetic set, through the CLI
  throughput  images per second at 448, batch 32, inference and training, MSRN against the bare
              backbone (benchmarks/bench_model.py's measurement, each in its own process)

    python benchmarks/gpu_check.py [--json FILE]    # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run        # the same steps on the CPU at tiny sizes

It prints one summary at the end and, with --json, writes the figures there; the exit status is 1
when a step fails.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # msrn from this tree; reference_impl from its tests

from reference_impl import random_reference_state, reference_forward  # noqa: E402

from msrn.data.synthetic import ensure_synthetic  # noqa: E402
from msrn.engine.evaluate import autocast  # noqa: E402
from msrn.engine.losses import soft_margin_loss as training_loss  # noqa: E402
from msrn.models import create_model, placeholder_vectors  # noqa: E402
from msrn.models.loading import load_checkpoint  # noqa: E402

STEPS = ("cuda_tests", "parity", "train", "evaluate", "throughput")
PARITY_TOL = 1e-4  # max |difference| over max |logit|, as tests/test_checkpoint.py allows


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each step runs at: the GPU figures, or tiny CPU stand-ins for the dry run."""

    device: str
    arch: str  # the reference layout holds a ResNet-101 or ResNet-50
    classes: int
    groups: int
    parity_size: int
    parity_batch: int
    train_model: str
    train_size: int
    train_batch: int
    train_steps: int
    eval_images: int
    eval_epochs: int
    eval_batch: int
    workers: int
    bench_arch: str
    bench_size: int
    bench_batch: int
    bench_warmup: int
    bench_iters: int
    bench_amps: tuple[str, ...]


GPU = Sizes("cuda", "resnet101", 80, 4, 448, 2, "msrn_resnet101", 448, 8, 8, 256, 3, 32, 4,
            "resnet101", 448, 32, 3, 10, ("none", "bf16"))
DRY = Sizes("cpu", "resnet50", 5, 1, 64, 2, "msrn_tiny", 64, 2, 3, 8, 1, 4, 0,
            "resnet18", 64, 2, 1, 1, ("none",))


def label_graph(c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random symmetric co-occurrence counts and image counts, dense enough for edges at tau 0.4."""
    rng = np.random.default_rng(seed)
    nums = rng.integers(50, 200, c)
    p = rng.uniform(0, 0.8, (c, c))
    counts = np.floor(np.minimum.outer(nums, nums) * (p + p.T) / 2).astype(np.int64)
    np.fill_diagonal(counts, 0)
    return counts, nums


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max())


def reference_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """The model's state-dict shapes under the reference's key names (reference_layout's mapping, reversed)."""
    shapes = {}
    for key, value in model.state_dict().items():
        if key in ("word_vectors", "adjacency"):
            continue
        if key.startswith("backbone."):
            key = "resnet_101." + key.removeprefix("backbone.")
        elif key.startswith("conv_buffer"):
            key = "resnet_101." + key
        shapes[key] = list(value.shape)
    return shapes


def step_parity(s: Sizes) -> dict:
    device = torch.device(s.device)
    counts, nums = label_graph(s.classes)
    wv = placeholder_vectors(s.classes)
    with torch.device("meta"):  # shapes only
        shapes = reference_shapes(create_model(f"msrn_{s.arch}", num_classes=s.classes, num_groups=s.groups))
    sd = random_reference_state(shapes, seed=3)
    ckpt = {"epoch": 1, "arch": s.arch, "state_dict": sd, "best_score": 0}
    model = load_checkpoint(ckpt, word_vectors=wv, cooccurrence=(counts, nums)).model
    x = torch.randn(s.parity_batch, 3, s.parity_size, s.parity_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        cpu = model(x)
        on_device = model.to(device)(x.to(device)).cpu()
        ref_sd = {k: v.to(device) for k, v in sd.items()}
        reference = reference_forward(ref_sd, x.to(device), wv, counts, nums, dtype=torch.float64).cpu()
    errors = {"device_vs_cpu": rel_err(on_device, cpu), "device_vs_reference": rel_err(on_device, reference),
              "cpu_vs_reference": rel_err(cpu, reference)}
    finite = bool(torch.isfinite(on_device).all() and torch.isfinite(cpu).all())
    sane = float(reference.abs().max()) > 0.1  # the random weights give logits that are not all ~0
    return {"ok": finite and sane and max(errors.values()) <= PARITY_TOL, **errors,
            "max_abs_logit": float(reference.abs().max()), "shape": list(x.shape), "classes": s.classes}


def step_train(s: Sizes) -> dict:
    """Overfit one fixed batch for a few steps in each precision, from the same initial weights."""
    device = torch.device(s.device)
    counts, nums = label_graph(s.classes)
    torch.manual_seed(0)
    model = create_model(s.train_model, num_classes=s.classes, num_groups=s.groups,
                         word_vectors=placeholder_vectors(s.classes), cooccurrence=(counts, nums)).to(device)
    start = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s.train_batch, 3, s.train_size, s.train_size, generator=g).to(device)
    targets = (torch.rand(s.train_batch, s.classes, generator=g) < 0.1).long()
    targets[:, 0] = 1  # at least one positive per image
    targets = targets.to(device)
    out: dict = {}
    for amp, name in (("none", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")):
        model.load_state_dict(start)
        model.train()
        opt = torch.optim.SGD(model.param_groups(0.1, 0.01), lr=0.1, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type == "cuda")
        losses, finite = [], True
        for _ in range(s.train_steps):
            with autocast(device, amp):
                sem = model.semantics()
                logits = model(x, semantics=sem)
                loss = training_loss(logits, targets) + sem.group_loss.float()
            losses.append(float(loss.detach()))
            finite &= bool(torch.isfinite(logits).all()) and math.isfinite(losses[-1])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        finite &= all(bool(torch.isfinite(p).all()) for p in model.parameters())
        out[name] = {"losses": losses, "finite": finite, "falls": losses[-1] < losses[0],
                     "scale": float(scaler.get_scale()) if scaler.is_enabled() else None}
    return {"ok": all(r["finite"] and r["falls"] for r in out.values()), **out,
            "model": s.train_model, "batch": s.train_batch, "size": s.train_size}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "msrn", *args], capture_output=True, text=True, cwd=cwd, env=env)


def step_evaluate(s: Sizes, work: Path) -> dict:
    """msrn train then msrn evaluate on the device, on a small synthetic set read as a CSV data set."""
    data = ensure_synthetic(work / "synthetic", num_train=s.eval_images, num_test=s.eval_images)
    csv = str(data / "annotations.csv")
    common = ["--dataset", "csv", "--data", csv, "--device", s.device, "--workers", str(s.workers)]
    train = _cli(["train", *common, "--out", str(work / "run"), "--model", "msrn_tiny", "--image-size", "64",
                  "--batch-size", str(s.eval_batch), "--epochs", str(s.eval_epochs),
                  "--pretrained", "none", "--val-fraction", "0", "--word-vectors", "ngram"], work)
    if train.returncode != 0:
        return {"ok": False, "error": "msrn train failed: " + train.stderr[-2000:]}
    t0 = time.perf_counter()
    report = work / "eval.json"
    ev = _cli(["evaluate", *common, "--checkpoint", str(work / "run" / "best.pt"), "--json", str(report)], work)
    seconds = time.perf_counter() - t0
    if ev.returncode != 0:
        return {"ok": False, "error": "msrn evaluate failed: " + ev.stderr[-2000:]}
    m = json.loads(report.read_text())
    trained = json.loads((work / "run" / "metrics.json").read_text())
    tuned = m.get("tuned_on_test_set", {})
    labelled = "TUNED ON THE TEST SET ITSELF" in ev.stdout and "not a fair number" in tuned.get("note", "")
    agree = m["mAP"] is not None and abs(m["mAP"] - trained["mAP"]) <= 0.01
    return {"ok": labelled and agree, "mAP": m["mAP"], "mAP_in_training": trained["mAP"], "CF1": m["CF1"],
            "OF1": m["OF1"], "tuned_threshold": tuned.get("threshold"), "tuned_CF1": tuned.get("CF1"),
            "images": m["num_images"], "evaluate_seconds": seconds}


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def step_throughput(s: Sizes) -> dict:
    """Images per second from the median step of bench_model.py's child processes."""
    bench = _bench_module()
    out: dict = {}
    for amp in s.bench_amps:
        args = argparse.Namespace(arch=s.bench_arch, classes=s.classes, groups=s.groups, size=s.bench_size,
                                  threads=min(8, os.cpu_count() or 1) if s.device == "cuda" else 1,
                                  warmup=s.bench_warmup, iters=s.bench_iters, device=s.device, amp=amp)
        per_mode = {}
        for mode in ("infer", "train"):
            rates, peaks = {}, {}
            for variant in ("backbone", "msrn"):
                r = bench._run_child(args, variant, mode, s.bench_batch)
                rates[variant] = s.bench_batch / r["median"]
                peaks[variant] = r["peak_growth"] / 1e9
            per_mode[mode] = {"backbone_img_s": rates["backbone"], "msrn_img_s": rates["msrn"],
                              "msrn_over_backbone": rates["msrn"] / rates["backbone"],
                              "peak_growth_gb": peaks}
        out["fp32" if amp == "none" else amp] = per_mode
    rates = [v for m in out.values() for r in m.values() for k, v in r.items() if k.endswith("img_s")]
    return {"ok": all(math.isfinite(v) and v > 0 for v in rates), **out, "batch": s.bench_batch,
            "size": s.bench_size, "arch": s.bench_arch}


def step_cuda_tests(s: Sizes, work: Path) -> dict:
    """pytest -m cuda over tests/; a module whose optional imports are missing does not stop the others."""
    xml = work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests"), "-m", "cuda", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", "-rfEs", f"--junitxml={xml}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        for suite in ElementTree.parse(xml).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ran = passed + counts["failures"]
    ok = counts["failures"] == 0 and (passed > 0 if s.device == "cuda" else counts["skipped"] > 0)
    return {"ok": ok, "passed": passed, "failed": counts["failures"], "skipped": counts["skipped"],
            "errors": counts["errors"], "ran": ran, "exit_code": done.returncode,
            **({"output": done.stdout[-3000:]} if not ok or counts["errors"] else {})}


def summary_line(name: str, r: dict) -> str:
    """One line of figures per step for the final summary."""
    head = f"{name:<11} {'PASS' if r.get('ok') else 'FAIL'} {r.get('seconds', 0):7.1f} s  "
    if "error" in r:
        return head + r["error"].strip().splitlines()[-1]
    if name == "cuda_tests":
        errors = f", {r['errors']} errors (modules that could not be collected)" if r["errors"] else ""
        return head + f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped" + errors
    if name == "parity":
        return head + ", ".join(f"{k} {r[k]:.1e}" for k in ("device_vs_cpu", "device_vs_reference", "cpu_vs_reference"))
    if name == "train":
        parts = [f"{p} {r[p]['losses'][0]:.4f} -> {r[p]['losses'][-1]:.4f}" + ("" if r[p]["finite"] else " NON-FINITE")
                 for p in ("fp32", "bf16", "fp16")]
        return head + "; ".join(parts)
    if name == "evaluate":
        return head + (f"mAP {r['mAP']:.2f} (training's {r['mAP_in_training']:.2f}), {r['images']} images "
                       f"in {r['evaluate_seconds']:.1f} s")
    if name == "throughput":
        parts = [f"{amp} {mode}: backbone {m['backbone_img_s']:.1f}, msrn {m['msrn_img_s']:.1f} img/s "
                 f"({m['msrn_over_backbone']:.2f}x)"
                 for amp in ("fp32", "bf16") if amp in r for mode, m in r[amp].items()]
        return head + "; ".join(parts)
    return head


def run(steps: list[str], sizes: Sizes, work: Path, json_path: Path | None = None) -> dict:
    """Run the steps in order; a step that raises is recorded as failed and the others still run.
    The figures so far are rewritten to json_path after every step, so a run cut short keeps them."""
    if sizes.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    report: dict = {"device": torch.cuda.get_device_name(0) if sizes.device == "cuda" else "cpu (dry run)",
                    "torch": torch.__version__, "dry_run": sizes.device == "cpu", "steps": {}}
    funcs = {"cuda_tests": lambda s: step_cuda_tests(s, work), "parity": step_parity, "train": step_train,
             "evaluate": lambda s: step_evaluate(s, work), "throughput": step_throughput}
    for name in steps:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            r = funcs[name](sizes)
        except Exception as e:  # one broken step must not hide the others' figures
            r = {"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"}
        r["seconds"] = time.perf_counter() - t0
        report["steps"][name] = r
        report["ok"] = all(r["ok"] for r in report["steps"].values())
        print(summary_line(name, r), flush=True)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    sizes = DRY if args.dry_run else GPU
    torch.set_num_threads(1 if args.dry_run else min(16, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="msrn-gpu-check-") as tmp:
        report = run(args.steps, sizes, Path(tmp), args.json)
    print(f"\n== summary: {report['device']}, torch {report['torch']}")
    for name, r in report["steps"].items():
        print(summary_line(name, r))
    print("ALL PASS" if report["ok"] else "SOME STEPS FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
