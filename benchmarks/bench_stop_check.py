"""The per-step cost of the stop-signal check under torchrun: one all-reduce of one integer per step.

Two gloo processes on this machine (the CPU path of tests/test_elastic.py) time `max_across`, the
check every rank runs after each optimiser step, and a whole DDP training step of a small model
(msrn_tiny, 64 px, 4 images per process), and print the check's share of a step. On GPUs the check
is an NCCL all-reduce of 8 bytes; the step already waits for its loss value, so it adds no sync.

    python benchmarks/bench_stop_check.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from msrn import distributed
from msrn.models import create_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, checks: int, steps: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    distributed.setup("cpu")
    for _ in range(50):  # warm the connection
        distributed.max_across(0)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(checks):
            distributed.max_across(0)
        times.append((time.perf_counter() - t0) / checks)
    torch.manual_seed(0)
    model = create_model("msrn_tiny", labels=[f"l{i}" for i in range(20)])
    net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 64, 64), (torch.rand(4, 20) < 0.2).float()
    step_times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        sem = model.semantics()
        logits = net(x, semantics=sem)
        loss = nn.functional.multilabel_soft_margin_loss(logits, y) + sem.group_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        if i >= 3:
            step_times.append(time.perf_counter() - t0)
    if rank == 0:
        results["check_s"] = min(times)
        results["step_s"] = statistics.median(step_times)
    tdist.barrier()
    tdist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=2000, help="checks per timing round (5 rounds, best kept)")
    p.add_argument("--steps", type=int, default=20, help="training steps timed (median kept)")
    args = p.parse_args()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), args.checks, args.steps, results), nprocs=2)
        check, step = results["check_s"], results["step_s"]
    print("2 gloo processes on CPU, 1 thread each")
    print(f"stop check (all-reduce of one int64): {check * 1e6:.1f} us")
    print(f"DDP training step, msrn_tiny 64 px, 4 images per process: {step * 1e3:.1f} ms")
    print(f"check / step: {check / step:.2%}")


if __name__ == "__main__":
    main()
