"""The GPU check of issues 15 and 23 in one script; benchmarks/gpu_check.sh runs it (inside 8 minutes
on one H200).

Steps, each timed and judged PASS or FAIL; every figure states whether TF32 was on:
  cuda_tests   the test suite's CUDA-marked tests (pytest -m cuda)
  parity       a random checkpoint in the reference's layout (COCO size: ResNet-101, 80 labels, 448):
               logits on the device against the CPU, fp32 with TF32 off, and both against
               tests/reference_impl.py in float64
  attention    the label attention alone at the COCO sizes (D 512, 84 semantics, N 784/196/49):
               the default (fused) form's values and gradients against the naive formula in float64,
               fp32 and bf16 autocast, and forward+backward time and peak memory of the fused,
               tiled and naive forms at batch 32
  train        8 SGD steps at lr 0.01 (where the reference converges from random weights) on one
               fixed batch, from a reference-layout checkpoint, in fp32, bf16 and fp16 autocast (fp16
               with a GradScaler, as msrn train): the loss before training (inference mode) against
               the reference formula in float64, each step's loss against the same steps in float64
               (the spec's attention formula), the loss falls, all finite
  evaluate     msrn train, then msrn evaluate on a small generated synthetic set, through the CLI
  distributed  torchrun --nproc_per_node=1 msrn train: the DDP path with NCCL (gloo in the dry run)
  throughput   images per second at 448, batch 32, inference and training, MSRN against the bare
               backbone in fp32 and bf16 autocast, with peak memory (bench_model.py's measurement,
               each in its own process; PyTorch's default TF32 settings, channels-last as msrn
               train), then the issue's targets as PASS/FAIL lines (not judged in the dry run)
  loader       images per second of the training loader alone on generated 640x480 JPEGs at 448
               for several worker counts, and a COCO-sized epoch against the model's training rate

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
from msrn.models import (  # noqa: E402
    create_model,
    load_checkpoint,  # noqa: E402
    placeholder_vectors,
)
from msrn.models._reference_layout import RENAMED  # noqa: E402
from msrn.models.attention import attend, label_attention_naive  # noqa: E402

STEPS = ("cuda_tests", "parity", "attention", "train", "evaluate", "distributed", "throughput", "loader")
PARITY_TOL = 1e-4  # max |difference| over max |logit|, as tests/test_checkpoint.py allows
LR = 0.01  # from random weights the reference converges here; at 0.1 it diverges as msrn does
# the targets of issue 23 (one H200, 448, batch 32, COCO configuration, PyTorch's default TF32 settings)
REFERENCE_TRAIN_IMG_S = 173.0  # the reference code's fp32 training step, measured on the H200 (issue 23's table)
TARGETS = {
    "train_vs_backbone": 0.85,
    "infer_vs_backbone": 0.9,
    "train_vs_reference": 2.0,
    "train_peak_vs_backbone": 1.25,
    "bf16_train_vs_fp32": 1.2,
}


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
    attn_dim: int
    attn_semantics: int
    attn_positions: tuple[int, ...]
    attn_batch: int  # timing
    attn_check_batch: int  # accuracy against float64
    loader_images: int
    loader_size: int
    loader_workers: tuple[int, ...]


GPU = Sizes(
    "cuda",
    "resnet101",
    80,
    4,
    448,
    2,
    "msrn_resnet101",
    448,
    8,
    8,
    256,
    3,
    32,
    4,
    "resnet101",
    448,
    32,
    3,
    10,
    ("none", "bf16"),
    512,
    84,
    (784, 196, 49),
    32,
    2,
    384,
    448,
    (4, 8, 15),
)
DRY = Sizes(
    "cpu",
    "resnet50",
    5,
    1,
    64,
    2,
    "msrn_resnet50",
    64,
    2,
    3,
    8,
    1,
    4,
    0,
    "resnet18",
    64,
    2,
    1,
    1,
    ("none",),
    16,
    7,
    (49, 16),
    2,
    2,
    8,
    64,
    (0, 1),
)


def tf32_state() -> str:
    """What TF32 does right now, for the figures' labels."""
    if not torch.cuda.is_available():
        return "n/a (cpu)"
    return (
        f"matmul TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, "
        f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}"
    )


def label_graph(c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random symmetric co-occurrence counts and image counts, dense enough for edges at tau 0.4."""
    rng = np.random.default_rng(seed)
    nums = rng.integers(50, 200, c)
    p = rng.uniform(0, 0.8, (c, c))
    counts = np.floor(np.minimum.outer(nums, nums) * (p + p.T) / 2).astype(np.int64)
    np.fill_diagonal(counts, 0)
    return counts, nums


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max())


def reference_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """The model's state-dict shapes under the reference's key names (msrn.models._reference_layout's, reversed)."""
    shapes = {}
    for key, value in model.state_dict().items():
        if key in ("word_vectors", "adjacency"):
            continue
        for old, new in RENAMED:  # the model's module names back to the reference's
            if key == new or (new.endswith(".") and key.startswith(new)):
                key = old + key[len(new) :]
                break
        if key.startswith(("backbone.", "conv_buffer")):
            key = "resnet_101." + key.removeprefix("backbone.")
        shapes[key] = list(value.shape)
    return shapes


def step_parity(s: Sizes) -> dict:
    device = torch.device(s.device)
    model, sd, wv, (counts, nums) = reference_model(s, s.arch, s.parity_size)
    x = torch.randn(s.parity_batch, 3, s.parity_size, s.parity_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        cpu = model(x)
        on_device = model.to(device)(x.to(device)).cpu()
        ref_sd = {k: v.to(device) for k, v in sd.items()}
        reference = reference_forward(ref_sd, x.to(device), wv, counts, nums, dtype=torch.float64).cpu()
    errors = {
        "device_vs_cpu": rel_err(on_device, cpu),
        "device_vs_reference": rel_err(on_device, reference),
        "cpu_vs_reference": rel_err(cpu, reference),
    }
    finite = bool(torch.isfinite(on_device).all() and torch.isfinite(cpu).all())
    sane = float(reference.abs().max()) > 0.1  # the random weights give logits that are not all ~0
    return {
        "ok": finite and sane and max(errors.values()) <= PARITY_TOL,
        **errors,
        "tf32": tf32_state(),
        "max_abs_logit": float(reference.abs().max()),
        "shape": list(x.shape),
        "classes": s.classes,
    }


def reference_model(s: Sizes, arch: str, size: int) -> tuple[torch.nn.Module, dict, np.ndarray, tuple]:
    """msrn loaded from a random checkpoint in the reference's layout, with that state, vectors and graph."""
    counts, nums = label_graph(s.classes)
    wv = placeholder_vectors(s.classes)
    with torch.device("meta"):  # shapes only
        shapes = reference_shapes(create_model(f"msrn_{arch}", num_classes=s.classes, num_groups=s.groups))
    sd = random_reference_state(shapes, seed=3)
    ckpt = {"epoch": 1, "arch": arch, "state_dict": sd, "best_score": 0}
    return load_checkpoint(ckpt, word_vectors=wv, cooccurrence=(counts, nums)).model, sd, wv, (counts, nums)


def _sgd_losses(
    model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, amp: str, steps: int, form: str | None = None
) -> dict:
    """SGD steps at LR (momentum 0.9, weight decay 1e-4, the trainer's parameter groups) on one batch, the
    attention in `form` (None: the device's choice)."""
    device = x.device
    model.train()
    opt = torch.optim.SGD(model.param_groups(LR, LR), lr=LR, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16" and device.type == "cuda")
    losses, finite = [], True
    for _ in range(steps):
        with autocast(device, amp):
            sem = model.semantics()
            logits = model(x, semantics=sem, attention=form)
            loss = training_loss(logits, targets) + sem.group_loss.to(loss_dtype(x))
        losses.append(float(loss.detach()))
        finite &= bool(torch.isfinite(logits).all()) and math.isfinite(losses[-1])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    finite &= all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return {
        "losses": losses,
        "finite": finite,
        "falls": losses[-1] < losses[0],
        "scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
    }


def loss_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def step_train(s: Sizes) -> dict:
    """Overfit one fixed batch for a few steps in each precision and in float64, from the same weights."""
    device = torch.device(s.device)
    arch = s.train_model.removeprefix("msrn_")
    model, sd, wv, (counts, nums) = reference_model(s, arch, s.train_size)
    model = model.to(device)
    start = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s.train_batch, 3, s.train_size, s.train_size, generator=g).to(device)
    targets = (torch.rand(s.train_batch, s.classes, generator=g) < 0.1).long()
    targets[:, 0] = 1  # at least one positive per image
    targets = targets.to(device)
    with torch.no_grad():  # the loss before training by the reference formula (inference mode), float64
        ref_sd = {k: v.to(device) for k, v in sd.items()}
        logits, gloss = reference_forward(ref_sd, x, wv, counts, nums, dtype=torch.float64, return_group_loss=True)
        reference_first = float(training_loss(logits, targets) + gloss)
    exact = copy.deepcopy(model).double()
    # the spec's formula, literally, in float64
    out: dict = {"float64": _sgd_losses(exact, x.double(), targets, "none", s.train_steps, form="naive")}
    del exact
    f64 = out["float64"]["losses"]
    for amp, name, tol in (("none", "fp32", 1e-3), ("bf16", "bf16", 3e-2), ("fp16", "fp16", 3e-2)):
        model.load_state_dict(start)
        model.eval()  # the reference formula's batch norms use their running statistics
        with torch.no_grad(), autocast(device, amp):
            sem = model.semantics()
            r_first = float(training_loss(model(x, semantics=sem), targets) + sem.group_loss.float())
        r = _sgd_losses(model, x, targets, amp, s.train_steps)
        r["eval_loss_before"] = r_first
        r["first_vs_reference"] = abs(r_first - reference_first) / reference_first
        # fp32 follows float64 step by step; with autocast only the first loss is comparable (fp16's
        # GradScaler may skip steps while it finds its scale)
        compared = r["losses"] if name == "fp32" else r["losses"][:1]
        r["worst_vs_float64"] = max(abs(a - b) / abs(b) for a, b in zip(compared, f64, strict=False))
        r["ok"] = r["finite"] and r["falls"] and r["first_vs_reference"] <= tol and r["worst_vs_float64"] <= tol
        out[name] = r
    return {
        "ok": all(r["ok"] for k, r in out.items() if k != "float64") and out["float64"]["falls"],
        **out,
        "reference_first_loss": reference_first,
        "lr": LR,
        "tf32": tf32_state(),
        "model": f"msrn_{arch}",
        "batch": s.train_batch,
        "size": s.train_size,
    }


def _time(fn, device: torch.device, iters: int) -> float:
    """Median seconds of fn() (after one warm-up call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def step_attention(s: Sizes) -> dict:
    """The attention alone: accuracy of the default form against float64, then its speed and memory."""
    device = torch.device(s.device)
    g = torch.Generator().manual_seed(0)
    d, m = s.attn_dim, s.attn_semantics
    sem = (torch.randn(m, d, generator=g) * 0.5).to(device)
    out: dict = {"tf32": tf32_state()}
    worst = {"fp32": 0.0, "bf16": 0.0}
    for n in s.attn_positions:
        feats = (torch.randn(s.attn_check_batch, d, n, generator=g) * 2).to(device)
        grad = torch.randn(s.attn_check_batch, m, d, generator=g).to(device)
        for name, amp in (("fp32", "none"), ("bf16", "bf16")):
            f, q = feats.clone().requires_grad_(), sem.clone().requires_grad_()
            with autocast(device, amp):
                got = attend(f, q)
            gf, gq = torch.autograd.grad(got, (f, q), grad.to(got.dtype))
            # float64 of the same inputs (bf16: rounded as autocast rounds them)
            f64 = (f.detach().bfloat16() if amp == "bf16" else f.detach()).double().requires_grad_()
            q64 = (q.detach().bfloat16() if amp == "bf16" else q.detach()).double().requires_grad_()
            want = label_attention_naive(f64, q64)
            wf, wq = torch.autograd.grad(want, (f64, q64), grad.double())
            worst[name] = max(worst[name], rel_err(got, want), rel_err(gf, wf), rel_err(gq, wq))
    out["fused_vs_float64"] = worst
    feats = [torch.randn(s.attn_batch, d, n, generator=g).to(device) for n in s.attn_positions]
    timing: dict = {}
    for form, amp in (("fused", "none"), ("fused", "bf16"), ("chunked", "none"), ("naive", "none")):

        def fwd_bwd(form=form, amp=amp) -> None:
            xs = [f.clone().requires_grad_() for f in feats]
            q = sem.clone().requires_grad_()
            with autocast(device, amp):
                total = sum(attend(x, q, form).float().sum() for x in xs)
            total.backward()

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        seconds = _time(fwd_bwd, device, 3)
        peak = (torch.cuda.max_memory_allocated() - base) / 1e9 if device.type == "cuda" else None
        timing[f"{form} {'bf16' if amp == 'bf16' else 'fp32'}"] = {"fwd_bwd_s": seconds, "peak_gb": peak}
    out["timing"] = timing
    out["batch"], out["positions"], out["dim"], out["semantics"] = s.attn_batch, list(s.attn_positions), d, m
    fused, naive = timing["fused fp32"]["fwd_bwd_s"], timing["naive fp32"]["fwd_bwd_s"]
    out["ok"] = worst["fp32"] <= 1e-4 and worst["bf16"] <= 2**-5 and (fused < naive or device.type == "cpu")
    return out


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "msrn", *args], capture_output=True, text=True, cwd=cwd, env=env)


def step_evaluate(s: Sizes, work: Path) -> dict:
    """msrn train then msrn evaluate on the device, on a small synthetic set read as a CSV data set."""
    data = ensure_synthetic(work / "synthetic", num_train=s.eval_images, num_test=s.eval_images)
    csv = str(data / "annotations.csv")
    common = ["--dataset", "csv", "--data", csv, "--device", s.device, "--workers", str(s.workers)]
    train = _cli(
        [
            "train",
            *common,
            "--out",
            str(work / "run"),
            "--model",
            "msrn_tiny",
            "--image-size",
            "64",
            "--batch-size",
            str(s.eval_batch),
            "--epochs",
            str(s.eval_epochs),
            "--pretrained",
            "none",
            "--val-fraction",
            "0",
            "--word-vectors",
            "ngram",
        ],
        work,
    )
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
    return {
        "ok": labelled and agree,
        "mAP": m["mAP"],
        "mAP_in_training": trained["mAP"],
        "CF1": m["CF1"],
        "OF1": m["OF1"],
        "tuned_threshold": tuned.get("threshold"),
        "tuned_CF1": tuned.get("CF1"),
        "images": m["num_images"],
        "evaluate_seconds": seconds,
    }


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def step_throughput(s: Sizes) -> dict:
    """Images per second from the median step of bench_model.py's child processes, peak memory, and the
    issue's targets (judged on a GPU only: the dry run's tiny CPU sizes say nothing about them)."""
    bench = _bench_module()
    out: dict = {}
    for amp in s.bench_amps:
        args = argparse.Namespace(
            arch=s.bench_arch,
            classes=s.classes,
            groups=s.groups,
            size=s.bench_size,
            threads=min(8, os.cpu_count() or 1) if s.device == "cuda" else 1,
            warmup=s.bench_warmup,
            iters=s.bench_iters,
            device=s.device,
            amp=amp,
            tf32="default",
            channels_last=s.device == "cuda",
        )
        per_mode = {}
        for mode in ("infer", "train"):
            rates, peaks, tf32 = {}, {}, ""
            for variant in ("backbone", "msrn"):
                r = bench._run_child(args, variant, mode, s.bench_batch)
                rates[variant] = s.bench_batch / r["median"]
                peaks[variant] = r["peak_growth"] / 1e9
                tf32 = r.get("tf32", tf32)
            per_mode[mode] = {
                "backbone_img_s": rates["backbone"],
                "msrn_img_s": rates["msrn"],
                "msrn_over_backbone": rates["msrn"] / rates["backbone"],
                "peak_growth_gb": peaks,
                "tf32": tf32,
            }
        out["fp32" if amp == "none" else amp] = per_mode
    rates = [v for m in out.values() for r in m.values() for k, v in r.items() if k.endswith("img_s")]
    finite = all(math.isfinite(v) and v > 0 for v in rates)
    targets = judge_targets(out) if s.device == "cuda" else {}
    return {
        "ok": finite and all(t["ok"] for t in targets.values()),
        **out,
        "targets": targets,
        "batch": s.bench_batch,
        "size": s.bench_size,
        "arch": s.bench_arch,
        "channels_last": s.device == "cuda",
    }


def judge_targets(r: dict) -> dict:
    """Issue 23's targets from the throughput figures: {name: {"value", "target", "ok"}}."""
    got: dict = {}
    for amp in ("fp32", "bf16"):
        if amp not in r:
            continue
        got[f"{amp} training vs backbone"] = (r[amp]["train"]["msrn_over_backbone"], TARGETS["train_vs_backbone"])
        got[f"{amp} inference vs backbone"] = (r[amp]["infer"]["msrn_over_backbone"], TARGETS["infer_vs_backbone"])
        got[f"{amp} training vs reference fp32 ({REFERENCE_TRAIN_IMG_S:.0f} img/s)"] = (
            r[amp]["train"]["msrn_img_s"] / REFERENCE_TRAIN_IMG_S,
            TARGETS["train_vs_reference"],
        )
        peaks = r[amp]["train"]["peak_growth_gb"]
        # at most 1.25x: judged as backbone / msrn >= 1 / 1.25, so every target reads "at least"
        got[f"{amp} training peak memory, backbone / msrn"] = (
            peaks["backbone"] / peaks["msrn"],
            1 / TARGETS["train_peak_vs_backbone"],
        )
    if "fp32" in r and "bf16" in r:
        got["bf16 training vs msrn fp32"] = (
            r["bf16"]["train"]["msrn_img_s"] / r["fp32"]["train"]["msrn_img_s"],
            TARGETS["bf16_train_vs_fp32"],
        )
    return {k: {"value": v, "target": t, "ok": v >= t} for k, (v, t) in got.items()}


def step_distributed(s: Sizes, work: Path) -> dict:
    """torchrun --nproc_per_node=1 msrn train on the device: the DDP path (NCCL on CUDA, gloo on CPU)."""
    data = ensure_synthetic(work / "synthetic", num_train=s.eval_images, num_test=s.eval_images)
    out = work / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        "--master_addr=127.0.0.1",
        "--master_port=29533",
        "-m",
        "msrn",
        "train",
        "--dataset",
        "csv",
        "--data",
        str(data / "annotations.csv"),
        "--device",
        s.device,
        "--workers",
        str(s.workers),
        "--out",
        str(out),
        "--model",
        "msrn_tiny",
        "--image-size",
        "64",
        "--batch-size",
        str(s.eval_batch),
        "--epochs",
        "1",
        "--pretrained",
        "none",
        "--val-fraction",
        "0",
        "--word-vectors",
        "ngram",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=300)
    backend = "nccl" if s.device == "cuda" else "gloo"
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else ""
    ddp = f"DDP world size 1 ({backend})" in log
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    ok = done.returncode == 0 and ddp and metrics.get("mAP") is not None
    return {
        "ok": ok,
        "backend": backend,
        "ddp_in_log": ddp,
        "mAP": metrics.get("mAP"),
        **({} if ok else {"error": f"exit {done.returncode}: " + (done.stderr or done.stdout)[-2000:]}),
    }


def step_loader(s: Sizes, work: Path, model_img_s: float | None) -> dict:
    """The training loader alone on generated JPEGs for several worker counts, and a COCO epoch's length."""
    spec = importlib.util.spec_from_file_location("bench_loader", ROOT / "benchmarks" / "bench_loader.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    folder = work / "jpegs"
    folder.mkdir(exist_ok=True)
    rates = mod.measure(folder, s.loader_images, list(s.loader_workers), s.loader_size, s.bench_batch)
    best = max(rates.values())
    out = {
        "img_s": {str(w): r for w, r in rates.items()},
        "images": s.loader_images,
        "size": s.loader_size,
        "cpus": os.cpu_count(),
    }
    if model_img_s:
        out["model_train_img_s"] = model_img_s
        out["coco_epoch"] = mod.epoch_estimate(best, model_img_s)
    out["ok"] = all(math.isfinite(r) and r > 0 for r in rates.values())
    return out


def step_cuda_tests(s: Sizes, work: Path) -> dict:
    """pytest -m cuda over tests/; a module whose optional imports are missing does not stop the others."""
    xml = work / "cuda_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests"),
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        "-rfEs",
        f"--junitxml={xml}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        for suite in ElementTree.parse(xml).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ran = passed + counts["failures"]
    ok = counts["failures"] == 0 and (passed > 0 if s.device == "cuda" else counts["skipped"] > 0)
    return {
        "ok": ok,
        "passed": passed,
        "failed": counts["failures"],
        "skipped": counts["skipped"],
        "errors": counts["errors"],
        "ran": ran,
        "exit_code": done.returncode,
        **({"output": done.stdout[-3000:]} if not ok or counts["errors"] else {}),
    }


def summary_line(name: str, r: dict) -> str:
    """One line of figures per step for the final summary."""
    head = f"{name:<11} {'PASS' if r.get('ok') else 'FAIL'} {r.get('seconds', 0):7.1f} s  "
    if "error" in r:
        return head + r["error"].strip().splitlines()[-1]
    if name == "cuda_tests":
        errors = f", {r['errors']} errors (modules that could not be collected)" if r["errors"] else ""
        return head + f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped" + errors
    if name == "parity":
        keys = ("device_vs_cpu", "device_vs_reference", "cpu_vs_reference")
        return head + ", ".join(f"{k} {r[k]:.1e}" for k in keys) + (f" ({r['tf32']})" if "tf32" in r else "")
    if name == "attention":
        w = r["fused_vs_float64"]
        times = ", ".join(
            f"{k} {v['fwd_bwd_s'] * 1e3:.1f} ms" + (f" {v['peak_gb']:.2f} GB" if v["peak_gb"] else "")
            for k, v in r["timing"].items()
        )
        return head + (
            f"fused vs float64: fp32 {w['fp32']:.1e}, bf16 {w['bf16']:.1e}; fwd+bwd at batch "
            f"{r['batch']}: {times} ({r['tf32']})"
        )
    if name == "train":
        parts = [
            f"{p} {r[p]['losses'][0]:.4f} -> {r[p]['losses'][-1]:.4f} (vs float64 {r[p]['worst_vs_float64']:.1e}"
            f", before training vs reference {r[p]['first_vs_reference']:.1e})"
            + ("" if r[p]["finite"] else " NON-FINITE")
            for p in ("fp32", "bf16", "fp16")
        ]
        return head + (
            f"lr {r['lr']}, reference loss before training {r['reference_first_loss']:.4f}, float64 "
            f"{r['float64']['losses'][0]:.4f} -> {r['float64']['losses'][-1]:.4f}; "
            + "; ".join(parts)
            + f" ({r['tf32']})"
        )
    if name == "evaluate":
        return head + (
            f"mAP {r['mAP']:.2f} (training's {r['mAP_in_training']:.2f}), {r['images']} images "
            f"in {r['evaluate_seconds']:.1f} s"
        )
    if name == "distributed":
        return head + f"torchrun --nproc_per_node=1, {r['backend']}, DDP in the log: {r['ddp_in_log']}, mAP {r['mAP']}"
    if name == "throughput":
        parts = [
            f"{amp} {mode}: backbone {m['backbone_img_s']:.1f}, msrn {m['msrn_img_s']:.1f} img/s "
            f"({m['msrn_over_backbone']:.2f}x), peak {m['peak_growth_gb']['backbone']:.2f} / "
            f"{m['peak_growth_gb']['msrn']:.2f} GB ({m['tf32']})"
            for amp in ("fp32", "bf16")
            if amp in r
            for mode, m in r[amp].items()
        ]
        lines = [head + "; ".join(parts)]
        lines += [
            f"  target {'PASS' if t['ok'] else 'FAIL'} {k}: {t['value']:.2f} (at least {t['target']:.2f})"
            for k, t in r["targets"].items()
        ]
        if not r["targets"]:
            lines.append("  targets not judged: the dry run's sizes say nothing about a GPU")
        return "\n".join(lines)
    if name == "loader":
        rates = ", ".join(f"{w} workers {v:.0f}" for w, v in r["img_s"].items())
        text = head + f"loader alone img/s at {r['size']}: {rates} ({r['cpus']} cpus)"
        if "coco_epoch" in r:
            e = r["coco_epoch"]
            text += (
                f"; model trains {r['model_train_img_s']:.0f} img/s: a COCO epoch ({e['images']} images) "
                f"{e['seconds'] / 60:.1f} min, bound by the {e['bound_by']}"
            )
        return text
    return head


def run(steps: list[str], sizes: Sizes, work: Path, json_path: Path | None = None) -> dict:
    """Run the steps in order; a step that raises is recorded as failed and the others still run.
    The figures so far are rewritten to json_path after every step, so a run cut short keeps them."""
    if sizes.device == "cuda":  # the in-process steps check accuracy: fp32 means fp32 (throughput's children
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # keep the defaults)
    report: dict = {
        "device": torch.cuda.get_device_name(0) if sizes.device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "dry_run": sizes.device == "cpu",
        "steps": {},
    }

    def model_rate() -> float | None:
        fig = report["steps"].get("throughput", {})
        amp = "bf16" if "bf16" in fig else "fp32"
        return fig[amp]["train"]["msrn_img_s"] if amp in fig else None

    funcs = {
        "cuda_tests": lambda s: step_cuda_tests(s, work),
        "parity": step_parity,
        "attention": step_attention,
        "train": step_train,
        "evaluate": lambda s: step_evaluate(s, work),
        "distributed": lambda s: step_distributed(s, work),
        "throughput": step_throughput,
        "loader": lambda s: step_loader(s, work, model_rate()),
    }
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
