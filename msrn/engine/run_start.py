"""How a training run starts: its run folder and log (stderr and log.txt), its data (the validation split carved
from training), and its label set and model: a resumed run's own (--resume), or new, maybe given another
checkpoint's weights (--init)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msrn import distributed as dist
from msrn.checkpoint import read_checkpoint
from msrn.data import DEFAULT_SPLITS, MultiLabelData, build_dataset, reader_options
from msrn.data.base import in_memory
from msrn.engine.config import TrainConfig
from msrn.errors import MSRNError
from msrn.hub import read_source
from msrn.io import FileLock, check_writable, lock_run_folder, remove_stale_temps
from msrn.labels.labelset import LabelSet, build_label_set
from msrn.models import (
    MSRN,
    Network,
    checkpoint_weights,
    create_model,
    dataset_settings,
    load_checkpoint,
    match_init_state,
    require_backbone,
)

log = logging.getLogger("msrn")


def setup_logging(out: Path | None) -> None:
    """Log to stderr and, on the main process, append to out/log.txt."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.INFO if dist.is_main() else logging.WARNING)  # one copy under torchrun
    log.addHandler(console)
    if out is not None:
        fh = logging.FileHandler(out / "log.txt")
        fh.setFormatter(fmt)
        log.addHandler(fh)


def read_resume_state(path: Path) -> dict:
    """The checkpoint to resume from; a damaged one stops the run before anything is written."""
    try:
        state = read_checkpoint(path)
    except MSRNError as e:
        best = path.parent / "best.pt"
        kept = f"; {best} is intact" if best.is_file() else ""
        raise MSRNError(f"cannot resume: {e}; nothing was written{kept}") from None
    missing = [k for k in ("config", "labelset", "optimizer", "rng", "step_in_epoch") if k not in state]
    if missing:
        raise MSRNError(
            f"cannot resume from {path}: it lacks the training state ({', '.join(missing)}); resume "
            "from a run folder's last.pt (best.pt and reference checkpoints hold weights only)"
        )
    return state


def init_from_checkpoint(model: nn.Module, path: str) -> None:
    """--init: load every weight of a reference or msrn checkpoint that fits; layers the new label set
    reshapes, and the label vectors and graph, stay as the fresh model has them (one log line says which)."""
    where = f"--init {path}"
    head = model.cfg.head if isinstance(model, MSRN) else "mlp"  # a reference checkpoint holds both classifiers
    given, arch, dropped = checkpoint_weights(read_source(path), where, head)  # a .pt, a model folder or hf://
    require_backbone(arch, model, where)
    state, fresh = match_init_state(model.state_dict(), given, where, getattr(model, "label_shaped", None))
    model.load_state_dict(state, strict=True)
    unused = f"; dropped the reference's unused {', '.join(dropped)}" if dropped else ""
    log.info(
        "%s: every weight taken except the layers the new label set reshapes, started afresh: %s; label "
        "vectors and graph from this run's labels%s",
        where,
        ", ".join(fresh) or "none",
        unused,
    )


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint --resume names (a bare --resume: the run folder's last.pt, None when there is none yet)."""
    if not cfg.resume:
        return None
    path = Path(cfg.out) / "last.pt" if cfg.resume == "auto" else Path(cfg.resume)
    if cfg.resume == "auto" and not path.is_file():
        log.info("no %s to resume from: starting a new run", path)
        return None
    if not path.is_file():
        raise MSRNError(f"--resume: {path} does not exist")
    return path


def settle_config(cfg: TrainConfig, state: dict | None, keep_epochs: bool) -> TrainConfig:
    """The validated config of the run: a resumed run's own, except where it runs and for how long
    (keep_epochs: no --epochs was given, so the run's own epoch count stays)."""
    if state is not None:
        saved = TrainConfig.from_dict(state["config"])
        cfg = dataclasses.replace(
            saved,
            epochs=saved.epochs if keep_epochs else cfg.epochs,
            workers=cfg.workers,
            device=cfg.device,
            out=cfg.out,
            resume=cfg.resume,
        )
    return cfg.validate()


def prepare_run_folder(out: Path, seed: int) -> FileLock | None:
    """Check the run folder before any work (not after the first epoch) and hold its lock (rank 0: the one writer;
    refused while another live run holds it), log into it, seed the run. The lock, on rank 0 (None elsewhere)."""
    run_lock: FileLock | None = None
    refused = None
    if dist.is_main():
        try:
            check_writable(out)
            run_lock = lock_run_folder(out)
            remove_stale_temps(out)  # half-written saves of a killed run (never a live run's: that one holds the lock)
        except (MSRNError, OSError) as e:
            refused = str(e)
    refused = dist.broadcast_object(refused)  # every rank stops with rank 0's one line: none is left waiting
    if refused:
        raise MSRNError(refused)
    setup_logging(out if dist.is_main() else None)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return run_lock


def split_validation(data: MultiLabelData, fraction: float, seed: int) -> tuple[MultiLabelData, MultiLabelData | None]:
    """Carve a seeded validation split from the training data (never from the test split)."""
    if fraction <= 0:
        return data, None
    order = np.random.default_rng([seed, 7919]).permutation(len(data))
    k = max(1, int(round(fraction * len(data))))

    def part(idx: np.ndarray, name: str) -> MultiLabelData:
        idx = np.sort(idx)
        return dataclasses.replace(data, split=name, images=[data.images[i] for i in idx], targets=data.targets[idx])

    return part(order[k:], f"{data.split}-train"), part(order[:k], f"{data.split}-val")


def read_splits(cfg: TrainConfig) -> tuple[MultiLabelData, MultiLabelData | None, MultiLabelData]:
    """The training split less the validation part carved from it (--val-fraction), that part (None without
    one), and the test split."""
    train_split, test_split = DEFAULT_SPLITS[cfg.dataset]
    options = reader_options(cfg)
    train_data, val_data = split_validation(
        build_dataset(cfg.dataset, cfg.data, cfg.train_split or train_split, **options), cfg.val_fraction, cfg.seed
    )
    test_data = build_dataset(cfg.dataset, cfg.data, cfg.test_split or test_split, **options)
    if cfg.in_memory:  # decoded once: neither the epochs nor their evaluations read a file again
        train_data, test_data = in_memory(train_data), in_memory(test_data)
        val_data = None if val_data is None else in_memory(val_data)
    return train_data, val_data, test_data


def labels_and_model(
    cfg: TrainConfig, state: dict | None, resume: Path | None, train_data: MultiLabelData
) -> tuple[LabelSet, Network]:
    """The label set and the model (on the CPU): a resumed run's own, else built from the training labels
    (with --init, then given a checkpoint's weights)."""
    if state is not None:
        return LabelSet.from_dict(state["labelset"]), load_checkpoint(state, where=str(resume)).model.train()
    labelset = build_label_set(
        train_data, vectors=cfg.word_vectors, name_map=cfg.name_map, tau=cfg.tau, cooccurrence=cfg.cooccurrence
    )
    backbone: dict[str, Any] = {"backbone": cfg.backbone} if cfg.backbone else {}
    model = create_model(
        cfg.model, label_set=labelset, pool_ratio=cfg.pool_ratio, pretrained=cfg.pretrained, **backbone,
        **cfg.model_switches(), **dataset_settings(cfg.model, cfg.dataset),  # a head's published setting
    )  # fmt: skip
    if cfg.init:
        init_from_checkpoint(model, cfg.init)
    return labelset, model
