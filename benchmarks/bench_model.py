"""Time and peak memory of MSRN against the bare ResNet-101 it reads, each measurement in its own process.

Variants (COCO configuration by default: 80 labels, 4 groups, 448x448, float32):
  backbone   ResNet-101 forward_features + the three 2x2 max-pools (what MSRN reads)
  naive      MSRN with the spec's materialising attention (the reference's cost)
  msrn       the project's MSRN with the fast paths msrn train switches on (its default attention: the fused
             kernels, the tiles for CPU training)
  optimized  msrn through msrn.models.optimize_for_inference (inference only)
  compiled   optimized, also through torch.compile (inference only; needs a C++ compiler on CPU, and
             its first call compiles: about 1.5 min on 2 cores, seconds once inductor's cache is warm)
Modes: infer (eval, inference_mode) and train (forward, loss, backward, SGD step with momentum).

    python benchmarks/bench_model.py            # full run, several minutes on 2 cores
    python benchmarks/bench_model.py --quick    # fewer iterations
    python benchmarks/bench_model.py --device cuda --amp bf16 --batches 16 32 --channels-last

On CUDA, --tf32 default keeps PyTorch's defaults (cuDNN convolutions in TF32, matmuls in float32);
on and off set both; every report names the setting.

Peak memory on CPU is the growth of the process's peak RSS over its RSS after building the
model (VmHWM after resetting it through /proc/self/clear_refs); on CUDA it is
max_memory_allocated over the memory allocated after the build. Training also reports the bytes
autograd saves for backward (unique storages, counted on the first step): unlike RSS peaks it
does not depend on the allocator, so its per-image slope is the steadier memory comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("backbone", "naive", "msrn", "optimized", "compiled")
INFER_ONLY = ("optimized", "compiled")
MODES = ("infer", "train")


class BareBackbone(nn.Module):
    """ResNet forward_features followed by the 2x2 max-pools MSRN applies at the three depths.

    The pools are MSRN's own (msrn.models._ops.max_pool2x2, faster than nn.MaxPool2d in inference),
    so that the ratios measure what MSRN adds to the backbone and nothing else.
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        from msrn.models._ops import max_pool2x2
        from msrn.models.resnet import ResNet

        self.backbone = ResNet(arch)
        self.pool = max_pool2x2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.pool(f) for f in self.backbone.forward_features(x)]  # B x C_s x H_s x W_s each


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); without it the build's peak would leak in."""
    Path("/proc/self/clear_refs").write_text("5")


def _build(args: argparse.Namespace) -> nn.Module:
    from msrn.models import create_model, use_fast_paths

    if args.variant == "backbone":
        return BareBackbone(args.arch)
    # with the fast paths the training loop switches on (and optimize_for_inference too)
    model = use_fast_paths(create_model(f"msrn_{args.arch}", num_classes=args.classes, num_groups=args.groups))
    if args.variant in INFER_ONLY:
        from msrn.models import optimize_for_inference

        model = optimize_for_inference(model.to(args.device), compile=args.variant == "compiled")
    return model


def _child(args: argparse.Namespace) -> dict:
    """Build one model, run warm-up and timed iterations of one mode at one batch size, report."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    if cuda and args.tf32 != "default":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = _build(args).to(args.device, memory_format=layout)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device).contiguous(memory_format=layout)
    target = (torch.rand(args.batch, args.classes, device=args.device) < 0.05).float()
    amp = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    opt = None
    if args.mode == "train":
        model.train()
        groups = model.param_groups(0.1, 0.01) if hasattr(model, "param_groups") else model.parameters()
        opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)  # as msrn train
    else:
        model.eval()

    form = "naive" if args.variant == "naive" else None  # None: the form attend chooses for the device

    def step() -> None:
        if opt is None:
            with torch.inference_mode(), amp:
                model(x) if args.variant in INFER_ONLY or args.variant == "backbone" else model(x, attention=form)
            return
        with amp:
            if args.variant == "backbone":
                loss = sum(f.float().mean() for f in model(x))
            else:
                sem = model.semantics()
                logits = model(x, semantics=sem, attention=form)
                loss = nn.functional.multilabel_soft_margin_loss(logits.float(), target) + sem.group_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seen: dict[tuple[str, int], int] = {}  # storages autograd keeps for backward, from the first step

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[(str(st.device), st.data_ptr())] = st.nbytes()
        return t

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak()
        base = _rss_kib("VmRSS") * 1024
    times, cpu = [], []
    for i in range(args.warmup + args.iters):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        if i == 0 and opt is not None:  # warm-up: also count the bytes saved for backward (allocator-independent)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                step()
        else:
            step()
        sync()
        if args.variant == "compiled" and i == args.warmup - 1:  # compiling is a one-off: measure what it made
            torch.cuda.reset_peak_memory_stats() if cuda else _reset_peak()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024
    return dict(
        variant=args.variant,
        mode=args.mode,
        batch=args.batch,
        times=times,
        median=statistics.median(times),
        min=min(times),
        cpu=min(cpu),
        cpu_times=cpu,
        peak_growth=peak - base,
        base=base,
        saved=sum(seen.values()),
        tf32=(
            f"matmul TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, "
            f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}"
        )
        if cuda
        else "n/a (cpu)",
    )


def _run_child(args: argparse.Namespace, variant: str, mode: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--mode", mode, "--batch", str(batch)]
    for k in ("arch", "classes", "groups", "size", "threads", "warmup", "iters", "device", "amp", "tf32"):
        cmd += [f"--{k}", str(getattr(args, k))]
    cmd += ["--channels-last"] if args.channels_last else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}/{mode}/batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(results: list[dict], batches: list[int]) -> str:
    """Markdown tables: time per step (wall min, wall median, CPU) with ratios to the backbone, peak growth."""
    get = {(r["variant"], r["mode"], r["batch"]): r for r in results}
    variants = [v for v in VARIANTS if any(k[0] == v for k in get)]
    lines = [
        "| variant | mode | batch | wall s (min) | x backbone | wall s (median) | CPU s (min) | x backbone "
        "| peak growth GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for b in batches:
            ref = get.get(("backbone", mode, b))
            for v in variants:
                r = get.get((v, mode, b))
                if r is None:
                    continue
                wall = f"{r['min'] / ref['min']:.2f}" if ref else "-"
                cpu = f"{r['cpu'] / ref['cpu']:.2f}" if ref else "-"
                lines.append(
                    f"| {v} | {mode} | {b} | {r['min']:.2f} | {wall} | {r['median']:.2f} | {r['cpu']:.2f} | {cpu} "
                    f"| {r['peak_growth'] / 1e9:.2f} |"
                )
    if len(batches) >= 2:
        lo, hi = batches[0], batches[-1]
        head = f"| variant | mode | peak growth per extra image GB (batch {lo} -> {hi}) | x backbone |"
        lines += ["", head, "|---|---|---|---|"]
        for mode in MODES:
            per = {}
            for v in variants:
                if (v, mode, lo) in get and (v, mode, hi) in get:
                    per[v] = (get[(v, mode, hi)]["peak_growth"] - get[(v, mode, lo)]["peak_growth"]) / (hi - lo)
            for v, g in per.items():
                ratio = f"{g / per['backbone']:.2f}" if per.get("backbone") else "-"
                lines.append(f"| {v} | {mode} | {g / 1e9:.3f} | {ratio} |")
        saved = {
            v: (get[(v, "train", hi)]["saved"] - get[(v, "train", lo)]["saved"]) / (hi - lo)
            for v in variants
            if (v, "train", lo) in get and (v, "train", hi) in get
        }
        if saved:
            lines += ["", f"| variant | saved for backward per extra image GB (batch {lo} -> {hi}) | x backbone |"]
            lines.append("|---|---|---|")
            for v, g in saved.items():
                ratio = f"{g / saved['backbone']:.2f}" if saved.get("backbone") else "-"
                lines.append(f"| {v} | {g / 1e9:.3f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed iterations")
    p.add_argument("--batches", type=int, nargs="+", help="default 2 4 on cpu, 16 32 on cuda")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--arch", default="resnet101")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--amp", default="none", choices=("none", "bf16"), help="bf16 autocast (explicit opt-in)")
    p.add_argument(
        "--tf32",
        default="default",
        choices=("default", "on", "off"),
        help="CUDA: PyTorch's defaults (TF32 convolutions, float32 matmuls), or TF32 on/off for both",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="model and input in channels-last (as msrn train on CUDA)"
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat every measurement (interleaved) and pool the times")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    # child-process arguments
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1
    if args.iters is None:
        args.iters = 2 if args.quick else 4
    if args.child:
        print(json.dumps(_child(args)))
        return
    batches = args.batches or ([16, 32] if args.device == "cuda" else [2, 4])
    print(
        f"# {args.arch}, {args.classes} labels, {args.groups} groups, {args.size}x{args.size}, device {args.device}, "
        f"amp {args.amp}, tf32 {args.tf32 if args.device == 'cuda' else 'n/a'}, "
        f"{'channels-last' if args.channels_last else 'contiguous'}, threads {args.threads}, "
        f"warmup {args.warmup}, iters {args.iters} x {args.rounds} rounds, "
        f"torch {torch.__version__}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    merged: dict[tuple[str, str, int], dict] = {}
    for rnd in range(args.rounds):
        for mode in args.modes:
            for b in batches:
                for v in args.variants:
                    if v in INFER_ONLY and mode == "train":
                        continue
                    r = _run_child(args, v, mode, b)
                    print(
                        f"round {rnd} {v:9s} {mode:5s} batch {b:3d}: median {r['median']:.3f} s, min {r['min']:.3f} s, "
                        f"cpu {r['cpu']:.3f} s, "
                        f"peak growth {r['peak_growth'] / 1e9:.3f} GB, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                    m = merged.setdefault((v, mode, b), {**r, "times": [], "peak_growth": r["peak_growth"]})
                    m["times"] += r["times"]
                    m["cpu"] = min(m["cpu"], r["cpu"])
                    m["peak_growth"] = min(m["peak_growth"], r["peak_growth"])
                    m["median"], m["min"] = statistics.median(m["times"]), min(m["times"])
    results = list(merged.values())
    print()
    print(_report(results, batches))
    if args.json:
        meta = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps(dict(args=meta, results=results), indent=1))


if __name__ == "__main__":
    main()
