"""The label attention alone at the COCO sizes (D 512, 84 semantics, N 784/196/49): the tiled exact
function at several tile sizes and the fused (scaled-dot-product) form at several head dimensions
against the spec's materialising formula, forward and forward+backward.

Rounds interleave the configurations so that a noisy machine disturbs them alike; the table shows
the best and the median over rounds.

    python benchmarks/bench_attention.py --batch 2 --chunks 65536 262144 1048576 4194304 --head-dims 1 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import msrn.models.attention as attention


def _step(fn, feats: list[torch.Tensor], sem: torch.Tensor, grad: bool) -> float:
    """Seconds for the attention at the three depths (and its backward when grad)."""
    xs = [f.clone().requires_grad_(grad) for f in feats]
    s = sem.clone().requires_grad_(grad)
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        total = sum(fn(x, s).sum() for x in xs)
        if grad:
            total.backward()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--semantics", type=int, default=84, help="labels + groups")
    p.add_argument("--positions", type=int, nargs="+", default=[784, 196, 49])
    p.add_argument("--chunks", type=int, nargs="+", default=[1 << 16, 1 << 18, 1 << 19, 1 << 20, 1 << 22])
    p.add_argument("--head-dims", type=int, nargs="*", default=[1, 8], help="fused form's padded head dimensions")
    p.add_argument("--sem-scale", type=float, default=0.1, help="standard deviation of the semantic vectors")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-naive", action="store_true", help="skip the materialising formula")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(args.batch, args.dim, n, generator=g) for n in args.positions]  # B x D x N_s
    sem = torch.randn(args.semantics, args.dim, generator=g) * args.sem_scale  # M x D
    chunk, head = attention.CHUNK_ELEMENTS, attention.HEAD_DIM.get("cpu", attention.DEFAULT_HEAD_DIM)
    configs = [(f"tiled {c}", attention.label_attention, c, head) for c in args.chunks]
    configs += [(f"fused, head dim {h}", attention.fused_attention, chunk, h) for h in args.head_dims]
    if not args.no_naive:
        configs.append(("naive", attention.label_attention_naive, chunk, head))
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for name, fn, chunk, head in configs:
            attention.CHUNK_ELEMENTS, attention.HEAD_DIM["cpu"] = chunk, head
            for grad in (False, True):
                times.setdefault((name, grad), []).append(_step(fn, feats, sem, grad))
    print(
        f"# batch {args.batch}, D {args.dim}, M {args.semantics}, N {args.positions}, threads {args.threads}, "
        f"semantics' std {args.sem_scale}"
    )
    print("| attention | forward best s | forward median s | fwd+bwd best s | fwd+bwd median s |")
    print("|---|---|---|---|---|")
    for name, *_ in configs:
        f, b = times[(name, False)], times[(name, True)]
        print(f"| {name} | {min(f):.3f} | {statistics.median(f):.3f} | {min(b):.3f} | {statistics.median(b):.3f} |")


if __name__ == "__main__":
    main()
