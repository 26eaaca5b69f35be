"""torch.distributed glue for runs launched with torchrun: rank, device, sharding, exact gathers.

A plain `python -m msrn train` is world size 1 and touches none of this.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """Pick the device and, under torchrun, join the process group (NCCL on GPUs, gloo on CPU)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if env_world_size() > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env_world_size() > 1 and not is_distributed():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(n: int) -> np.ndarray:
    """This process's share of range(n) for evaluation: every index exactly once across ranks, no padding."""
    return np.arange(rank(), n, world_size())


def gather_rows(indices: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Reassemble per-rank (indices, rows) into the full n-row array, in index order, on every rank."""
    if not is_distributed():
        out = np.empty((n, *rows.shape[1:]), rows.dtype)
        out[indices] = rows
        return out
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, (indices, rows))
    out = np.empty((n, *rows.shape[1:]), rows.dtype)
    seen = np.zeros(n, dtype=np.int64)
    for idx, r in parts:
        out[idx] = r
        seen[idx] += 1
    if not (seen == 1).all():
        raise RuntimeError("distributed evaluation lost or duplicated images")
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's value of obj on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
