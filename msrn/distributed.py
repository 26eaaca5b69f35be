"""torch.distributed glue for runs launched with torchrun: rank, device, sharding, exact gathers.

A plain `python -m msrn train` is world size 1 and touches none of this.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from msrn.errors import MSRNError

T = TypeVar("T")
log = logging.getLogger(__name__)


def env_world_size() -> int:
    """The world size torchrun announced (1 without a launcher), known before the group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """Whether this process is in an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 outside one)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group (1 outside one)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, also before setup and after teardown."""
    if is_distributed():
        return rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: str) -> torch.device:
    """Pick the device and, under torchrun, join the process group (NCCL on GPUs, gloo on CPU)."""
    global _store, _teardowns
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MSRNError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MSRNError(f"--device {device}: no CUDA GPU is available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if env_world_size() > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        # TF32 silently rounds fp32 convolutions to 10-bit mantissas; reduced precision is --amp's job
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # under torchrun (which sets TORCHELASTIC_RUN_ID) also with one process: the path a run on N GPUs takes
    if (env_world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ) and not is_distributed():
        _store, _teardowns = restart_store(), 0  # rank 0 hosts it unless torchrun's agent does
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo",
            store=_store,
            rank=int(os.environ["RANK"]),
            world_size=env_world_size(),
        )
    return dev


STORE_TIMEOUT = timedelta(minutes=30)  # torch's default for gloo and NCCL process groups
# how long a rank that has finished waits at teardown for the others: they finish the same work at the
# same step, so a rank missing for this long is stuck or dead
TEARDOWN_TIMEOUT = timedelta(minutes=2)
_store: dist.Store | None = None  # the store the process group met in (setup)
_teardowns = 0  # teardowns of process groups met in _store, to keep each one's keys apart


def restart_store() -> dist.Store:
    """The key-value store the process group meets in, with a prefix of its own for each elastic restart.

    torchrun (c10d rendezvous, its default since torch 2.4) keeps one TCPStore for the whole job and
    hands it to every restart of the workers. Gloo and NCCL publish each rank's address in it under
    fixed keys, so after a restart a rank could read a dead worker's address from the previous attempt
    and fail with "Connection refused" (pytorch/pytorch#135712). TORCHELASTIC_RESTART_COUNT, the same
    for every worker an agent starts, keeps each attempt's keys apart.
    """
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts the store
    rank = int(os.environ["RANK"])
    store = dist.TCPStore(addr, port, env_world_size(), is_master=rank == 0 and not shared, timeout=STORE_TIMEOUT)
    return dist.PrefixStore(f"msrn/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def teardown(timeout: timedelta = TEARDOWN_TIMEOUT) -> None:
    """After a run that every rank ended alike (success, or a stop at one agreed step): wait at most
    `timeout` for every rank, then leave the process group (no-op outside one).

    The ranks meet in the key-value store (torchrun's agent keeps it), not in a collective: no message
    of the process group is in flight when it is destroyed, and a rank that never comes is a warning
    after `timeout`, not a job that outlives its work. The group is then left as it is, since
    destroying an NCCL group whose peers are inside a collective can hang. Not for error paths: a
    rank that fails should just exit (torchrun then stops the others).
    """
    global _teardowns
    if not is_distributed():
        return
    _teardowns += 1
    if _meet(f"teardown/{_teardowns}", timeout):
        dist.destroy_process_group()
    else:
        log.warning(
            "rank %d: not every rank finished within %s; leaving without tearing the group down", rank(), timeout
        )


def _meet(name: str, timeout: timedelta) -> bool:
    """Whether every rank reached the meeting `name` within `timeout`, counted in the setup's store. Where
    this rank hosts the store (no torchrun agent does), it also waits for every rank to have seen the
    meeting complete, so that none finds the store gone."""
    if _store is None:  # a group that msrn's setup did not make: its collective barrier
        dist.barrier()
        return True
    try:
        for step in ("arrived", "left"):
            if _store.add(f"{name}/{step}", 1) == world_size():
                _store.set(f"{name}/{step}-all", "1")
            if step == "arrived" or _hosts_store():
                _store.wait([f"{name}/{step}-all"], timeout)
    except RuntimeError:  # timed out (DistStoreError), or the store's host has gone
        return False
    return True


def _hosts_store() -> bool:
    """Whether this process runs the store's server (rank 0 when torchrun's agent does not: restart_store)."""
    return rank() == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"


def barrier() -> None:
    """Wait for every process (no-op outside a group)."""
    if is_distributed():
        dist.barrier()


def shard(n: int) -> np.ndarray:
    """This process's share of range(n) for evaluation: every index exactly once across ranks, no padding."""
    return np.arange(rank(), n, world_size())


def gather_rows(indices: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Reassemble per-rank (indices, rows) into the full n-row array, in index order, on every rank.

    Raises RuntimeError unless every index in range(n) came from exactly one rank exactly once.
    """
    parts: list = [(indices, rows)]
    if is_distributed():
        parts = [None] * world_size()
        dist.all_gather_object(parts, (indices, rows))
    out = np.empty((n, *rows.shape[1:]), rows.dtype)
    seen = np.zeros(n, dtype=np.int64)
    for idx, r in parts:
        if len(idx) != len(r) or (len(idx) and (idx.min() < 0 or idx.max() >= n)):
            raise RuntimeError(f"gathered rows do not match indices in range({n})")
        out[idx] = r
        np.add.at(seen, idx, 1)
    if not (seen == 1).all():
        lost, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(f"distributed evaluation lost {lost} and duplicated {twice} of {n} images")
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's value of obj on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all processes (float64), the same on every rank."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def max_across(value: int) -> int:
    """The largest of every process's `value` (an int64), the same on every rank; one small all-reduce."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every rank's module, in place."""
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def grad_sync(net: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch's forward and backward: DDP's no_sync() unless `sync` is true."""
    if sync or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()
