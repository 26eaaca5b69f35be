"""DDP on CPU (gloo, 2 processes): exact evaluation, exact optimisation step, checkpoints and resume.

Runs go through the real launcher (`python -m torch.distributed.run ... -m msrn train`) on a tiny
CSV dataset: 24 training images, 11 test images (odd, so a padded shard would count one twice),
4 "step" images (one global batch) and msrn_tiny at 64 px.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from data_helpers import noise_csv
from torch import nn

from msrn import distributed
from msrn.checkpoint import read_checkpoint
from msrn.data import build_dataset
from msrn.engine.config import TrainConfig
from msrn.engine.evaluate import predict_logits, score_metrics
from msrn.engine.losses import model_group_loss
from msrn.engine.sampling import EpochSampler
from msrn.engine.train import train
from msrn.models import load_checkpoint

pytestmark = pytest.mark.slow  # every test here launches torchrun

LABELS = ("cat", "dog", "sky", "tree")
SPLITS = {"train": 24, "test": 11, "step": 4}
TINY = [
    "--image-size",
    "64",
    "--model",
    "msrn_tiny",
    "--pretrained",
    "none",
    "--workers",
    "0",
    "--val-fraction",
    "0",
    "--save-every",
    "0",
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset: 32x32 noise images with a few labels each, one CSV."""
    return noise_csv(tmp_path_factory.mktemp("ddp-data"), SPLITS, LABELS, size=32)


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=nproc -m msrn ARGS` on 127.0.0.1; fails on error."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "msrn",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def single_process_config(data: Path, out: Path, **fields: object) -> TrainConfig:
    """The TINY options as a TrainConfig for an in-process (world size 1) run."""
    base = dict(
        dataset="csv",
        data=str(data),
        out=str(out),
        model="msrn_tiny",
        pretrained=None,
        image_size=64,
        workers=0,
        val_fraction=0.0,
        save_every=0,
        pool_ratio=0.2,
        epochs=1,
        batch_size=4,
    )
    return TrainConfig(**{**base, **fields})


def evaluate_single_process(checkpoint: Path, data: Path) -> dict:
    """`msrn evaluate`'s metrics for a checkpoint, computed in this (single) process."""
    loaded = load_checkpoint(checkpoint, labels=build_dataset("csv", data, "test").labels)
    test = build_dataset("csv", data, "test")
    logits = predict_logits(loaded.model, test, loaded.image_size, 5, 0, torch.device("cpu"))
    return score_metrics(logits, test.targets, loaded.thresholds, model_group_loss(loaded.model))


def test_ddp_run_metrics_equal_single_process_evaluation_of_its_checkpoint(csv_data: Path, tmp_path: Path) -> None:
    """2-process training writes once (rank 0) and reports the metrics a 1-process evaluation finds."""
    out = tmp_path / "run"
    done = torchrun(
        [
            "train",
            "--dataset",
            "csv",
            "--data",
            str(csv_data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            *TINY,
        ]
    )
    assert done.stdout.count("done: best.pt") == 1
    assert done.stderr.count("epoch 1/1 |") == 1  # rank 1 logs warnings only
    assert (out / "log.txt").read_text().count("epoch 1/1 |") == 1
    assert "DDP world size 2" in (out / "log.txt").read_text()
    assert not list(out.glob(".*.tmp"))

    reported = json.loads((out / "metrics.json").read_text())
    assert not any(k.startswith("module.") for k in read_checkpoint(out / "best.pt")["state_dict"])
    mine = evaluate_single_process(out / "best.pt", csv_data)
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert mine[key] == pytest.approx(reported[key], abs=1e-9), key
    np.testing.assert_allclose(mine["ap_per_label"], reported["ap_per_label"], atol=1e-9)
    assert mine["loss"] == pytest.approx(reported["loss"], rel=1e-6)


def test_single_process_checkpoint_resumes_under_torchrun(csv_data: Path, tmp_path: Path) -> None:
    """A 1-process last.pt goes on for one more epoch on 2 processes; the result loads in 1 process."""
    out = tmp_path / "run"
    train(single_process_config(csv_data, out))
    first = read_checkpoint(out / "last.pt")
    assert first["epoch"] == 1

    done = torchrun(
        ["train", "--dataset", "csv", "--data", str(csv_data), "--out", str(out), "--epochs", "2", "--resume", *TINY]
    )
    assert "resumed at epoch 2" in done.stderr
    last = read_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert last["history"][0] == first["history"][0]
    assert last["global_step"] == first["global_step"] * 2  # 24 images / global batch 4, either way
    reported = json.loads((out / "metrics.json").read_text())
    assert reported["epoch"] == 2
    assert evaluate_single_process(out / "best.pt", csv_data)["mAP"] == pytest.approx(reported["mAP"], abs=1e-9)


def test_one_step_on_two_processes_equals_one_process_with_the_global_batch(csv_data: Path, tmp_path: Path) -> None:
    """One optimiser step, global batch 4: 2 processes x 2 micro-batches of 1 == 1 process x 4 of 1.

    Why this comparison is the exact one on CPU: in training mode BatchNorm normalises with the
    statistics of the images it sees together, so two runs compute the same function only if they
    group images into the same BatchNorm batches. DDP averages the ranks' mean-loss gradients (the
    gradient of the mean over the global batch), gradient accumulation averages the micro-batches'
    ones, and the group loss is the same everywhere; with micro-batches of one image both runs see
    the same groups (rank r takes global positions r, r + 2; one process takes 0, 1, 2, 3), so
    weights and gradients agree up to float summation order. (BatchNorm's running statistics
    are not compared: they are moving averages over the micro-batches one process saw, 4 in one
    process, 2 on rank 0, whose are saved; they do not enter a training-mode step.) The same
    comparison with micro-batches of B > 1 is exact only with SyncBatchNorm (`--sync-bn`, 2 x B
    vs 1 x 2B), which PyTorch implements for GPUs only. The DDP run also exercises no_sync()
    on the first micro-batch of each step.
    """
    args = [
        "--dataset",
        "csv",
        "--data",
        str(csv_data),
        "--train-split",
        "step",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        *TINY,
    ]
    torchrun(["train", *args, "--out", str(tmp_path / "ddp"), "--grad-accum", "2"])
    train(single_process_config(csv_data, tmp_path / "one", train_split="step", batch_size=4, grad_accum=4))

    ddp, one = read_checkpoint(tmp_path / "ddp" / "last.pt"), read_checkpoint(tmp_path / "one" / "last.pt")
    assert ddp["global_step"] == one["global_step"] == 1
    assert ddp["state_dict"].keys() == one["state_dict"].keys()
    running = ("running_mean", "running_var", "num_batches_tracked")  # per-process averages: see above
    for name, value in one["state_dict"].items():
        if not name.endswith(running):
            torch.testing.assert_close(ddp["state_dict"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    # after one SGD step the momentum buffer is the (clipped) gradient plus weight decay: compare it
    # too, and make sure it is large enough for the weight comparison above to mean something
    bufs = [
        (one["optimizer"]["state"][k]["momentum_buffer"], v["momentum_buffer"])
        for k, v in ddp["optimizer"]["state"].items()
    ]
    assert len(bufs) == len(one["optimizer"]["state"]) > 0
    for want, got in bufs:
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    assert max(float(b.abs().max()) for b, _ in bufs) > 1e-2
    assert ddp["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)


class MeanColour(nn.Module):
    """A deterministic stand-in model: per-image channel means times fixed weights."""

    def __init__(self, classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, 3 * classes).reshape(3, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.weight


def _gather_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    """One rank of the odd-count test: shard, predict, gather; record what this rank saw."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed.setup("cpu")
    test = build_dataset("csv", data, "test")
    logits = predict_logits(MeanColour(len(test.labels)), test, 64, 2, 0, torch.device("cpu"))
    n = len(test.images)
    try:
        distributed.gather_rows(np.array([0, 1]), np.zeros((2, 1), np.float32), 2)  # both ranks send 0 and 1
        duplicate = "not detected"
    except RuntimeError as e:
        duplicate = str(e)
    np.savez(
        Path(out) / f"rank{rank}.npz",
        shard=distributed.shard(n),
        logits=logits,
        ordered=distributed.gather_rows(distributed.shard(n), distributed.shard(n)[:, None], n),
        duplicate=duplicate,
    )
    distributed.teardown()


def test_odd_number_of_test_images_counted_exactly_once(csv_data: Path, tmp_path: Path) -> None:
    """11 test images on 2 ranks: disjoint shards cover all 11, and every rank gathers the 1-process scores."""
    mp.spawn(_gather_worker, args=(2, free_port(), str(csv_data), str(tmp_path)), nprocs=2, join=True)
    test = build_dataset("csv", csv_data, "test")
    n = len(test.images)
    assert n == 11
    expected = predict_logits(MeanColour(len(test.labels)), test, 64, 4, 0, torch.device("cpu"))
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    shards = [r["shard"] for r in ranks]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n)) and [len(s) for s in shards] == [6, 5]
    for r in ranks:
        np.testing.assert_allclose(r["logits"], expected, rtol=1e-6, atol=1e-6)
        assert r["ordered"][:, 0].tolist() == list(range(n))
        assert "lost 0 and duplicated 2 of 2 images" in str(r["duplicate"])


def test_gather_rows_in_one_process_checks_coverage() -> None:
    """Without a process group gather_rows still refuses lost or repeated images."""
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(distributed.gather_rows(np.array([2, 0, 1]), rows, 3), rows[[1, 2, 0]])
    with pytest.raises(RuntimeError, match="lost 1 and duplicated 1"):
        distributed.gather_rows(np.array([0, 0, 1]), rows, 3)


@pytest.mark.parametrize("n", [24, 23])
def test_sampler_shards_and_resumes_independently_of_world_size(n: int) -> None:
    """Ranks split the epoch's permutation (padded to the world size); a mid-epoch start is global."""
    full = EpochSampler(n, seed=3)
    full.set_epoch(2)
    order = full.order()
    assert sorted(order.tolist()) == list(range(n))
    shards = []
    for r in range(2):
        s = EpochSampler(n, seed=3, rank=r, world=2)
        s.set_epoch(2)
        shards.append(s.order())
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    merged = np.stack(shards, 1).reshape(-1)
    np.testing.assert_array_equal(merged[:n], order)  # global position p is rank p % 2's
    for world in (1, 2, 4):  # 2 steps of global batch 4 done: the same images remain for any world size
        left = []
        for r in range(world):
            s = EpochSampler(n, seed=3, rank=r, world=world)
            s.set_epoch(2, start=8)
            left += s.order().tolist()
        padded = np.concatenate([order, order[: (-n) % world]])
        assert sorted(left) == sorted(padded[8:].tolist())
    other = EpochSampler(n, seed=3)
    other.set_epoch(3)
    assert other.order().tolist() != order.tolist()
