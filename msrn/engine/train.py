"""The training loop (docs/design.md §7) and the `msrn train` command.

files -> dataset -> loader -> model -> loss -> optimiser -> checkpoint/metrics/plots. The run
folder holds last.pt (everything needed to resume exactly), best.pt (weights, labels, graph),
metrics.json (the selected epoch's test metrics), config.json, log.txt and PNG plots.
Nothing is selected on the test split: best.pt is the best validation epoch when a validation
split is carved from training (--val-fraction), otherwise the last epoch. With --ema both the live
and the averaged weights are evaluated; best.pt holds the better on validation (the averaged ones
without a validation split) and its `weights` entry says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from msrn import distributed as dist
from msrn.checkpoint import read_checkpoint
from msrn.data import DEFAULT_SPLITS, ImageDataset, MultiLabelData, build_dataset, reader_options
from msrn.data.base import in_memory
from msrn.data.loader import build_loader
from msrn.data.transforms import TrainTransform
from msrn.engine.config import TrainConfig, add_config_arguments, config_from_args
from msrn.engine.ema import WeightEMA
from msrn.engine.evaluate import autocast, predict_logits, score_metrics
from msrn.engine.losses import build_loss, model_group_loss, objective
from msrn.engine.optim import make_optimizer, make_scheduler
from msrn.engine.preemption import Stopped, StopSignals, parse_signal, shield_workers
from msrn.engine.sampling import EpochSampler, SeededView, rng_state, set_rng_state
from msrn.engine.tensorboard import INSTALL_HINT, open_board
from msrn.errors import MSRNError, setting_up
from msrn.hub import read_source
from msrn.io import FileLock, atomic_save_torch, atomic_write_json, check_writable, lock_run_folder, remove_stale_temps
from msrn.labels.labelset import LabelSet, build_label_set
from msrn.metrics import map_text, per_label_thresholds, sigmoid
from msrn.models import (
    MSRN,
    checkpoint_weights,
    create_model,
    dataset_settings,
    load_checkpoint,
    match_init_state,
    model_state,
    require_backbone,
    use_fast_paths,
    with_tta,
)
from msrn.plots import plot_ap_per_label, plot_history

log = logging.getLogger("msrn")
# optimiser steps between reads of the training losses to the host: each read waits for the device to
# finish, so reading every step would leave a GPU idle while the host queues the next step's kernels
SYNC_EVERY = 32


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


@dataclass(frozen=True)
class Evaluation:
    """One set of weights evaluated at an epoch's end."""

    validation: dict | None  # metrics on the validation split; None without one
    thresholds: np.ndarray | None  # per-label thresholds tuned on validation; None unless asked for
    test: dict  # metrics on the test split, at those thresholds

    @property
    def val_map(self) -> float | None:
        """The validation mAP that selects epochs; None without a validation split or a positive in it."""
        return None if self.validation is None else self.validation["mAP"]


@dataclass
class Selected:
    """The epoch whose weights best.pt holds, and why (stored in checkpoints as a dict)."""

    epoch: int
    score: float | None  # its validation mAP, or its test mAP when selected as the last epoch
    selected_by: str  # "validation mAP" or "last epoch"
    thresholds: list[float] | None = None
    weights: str | None = None  # "live" or "ema", when the run keeps both

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.weights is None:
            del d["weights"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Selected | None:
        return cls(**d) if d else None  # a checkpoint written before the first epoch ended holds {}


def history_entry(epoch: int, train_loss: float, seconds: float, results: dict[str, Evaluation]) -> dict:
    """One epoch's row of the history: its training loss and time, and per evaluated weights ("live",
    "ema", prefixed ema_) the validation mAP, the test loss and the test mAP."""
    entry: dict[str, float | None] = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds}
    for which, r in results.items():
        prefix = "" if which == "live" else "ema_"
        if r.validation is not None:
            entry[prefix + "val_mAP"] = r.val_map
        entry.update({prefix + "test_loss": r.test["loss"], prefix + "mAP": r.test["mAP"]})
    return entry


def weights_text(results: dict[str, Evaluation]) -> str:
    """The log line's account of the live and EMA weights' mAP, when both were evaluated."""
    if len(results) < 2:
        return ""
    parts = []
    for which, r in results.items():
        val_map = float("nan") if r.val_map is None else r.val_map  # a split without a positive has no mAP
        val = f"val {val_map:.2f} " if r.validation is not None else ""
        parts.append(f"{which} {val}test {r.test['mAP'] or float('nan'):.2f}")
    return " | mAP " + ", ".join(parts)


class Trainer:
    """Owns one run: data, model, optimiser, schedule, state on disk.

    Built in the steps __init__ lists; fit() then runs epochs, each train_epoch and end_epoch
    (evaluate every kept set of weights, select, save).
    """

    def __init__(self, cfg: TrainConfig, keep_epochs: bool = False):
        if cfg.init and cfg.resume:
            raise MSRNError(
                "--init and --resume exclude each other: --init starts a new run from a checkpoint's "
                "weights, --resume continues a run from its last.pt"
            )
        self.device = dist.setup(cfg.device)
        self.out = Path(cfg.out)
        resume = dist.broadcast_object(resolve_resume(cfg))  # rank 0 decides; every rank reads the file
        self.state = read_resume_state(resume) if resume else None
        self.cfg = settle_config(cfg, self.state, keep_epochs)
        self.prepare_run_folder()
        self.build_data()
        self.build_model(resume)
        self.distribute_model()
        self.compile_model()
        self.build_loader()
        self.build_optimiser()  # after the loader: a one-cycle schedule counts the steps of the run
        self.start_or_restore()
        self.stop = StopSignals()  # no signal handled until fit() runs inside train()'s `with`
        self.saved_step = -1  # the global step last.pt was last written at

    # -- building the run, in order --------------------------------------------------------------
    def prepare_run_folder(self) -> None:
        """Check the run folder before any work (not after the first epoch) and hold its lock (rank 0: the one
        writer; refused while another live run holds it), log into it, seed the run."""
        self.run_lock: FileLock | None = None
        refused = None
        if dist.is_main():
            try:
                check_writable(self.out)
                self.run_lock = lock_run_folder(self.out)
                # half-written saves of a killed run (never a live run's: that one holds the lock)
                remove_stale_temps(self.out)
            except (MSRNError, OSError) as e:
                refused = str(e)
        refused = dist.broadcast_object(refused)  # every rank stops with rank 0's one line: none is left waiting
        if refused:
            raise MSRNError(refused)
        setup_logging(self.out if dist.is_main() else None)
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed % 2**32)

    def build_data(self) -> None:
        """The training split less the validation part carved from it (--val-fraction), and the test split."""
        cfg = self.cfg
        train_split, test_split = DEFAULT_SPLITS[cfg.dataset]
        options = reader_options(cfg)
        self.train_data, self.val_data = split_validation(
            build_dataset(cfg.dataset, cfg.data, cfg.train_split or train_split, **options), cfg.val_fraction, cfg.seed
        )
        self.test_data = build_dataset(cfg.dataset, cfg.data, cfg.test_split or test_split, **options)
        if cfg.in_memory:  # decoded once: neither the epochs nor their evaluations read a file again
            self.train_data, self.test_data = in_memory(self.train_data), in_memory(self.test_data)
            self.val_data = None if self.val_data is None else in_memory(self.val_data)

    def build_model(self, resume: Path | None) -> None:
        """The label set and the model on the device: a resumed run's own, else built from the training
        labels (with --init, then given a checkpoint's weights)."""
        cfg = self.cfg
        if self.state is not None:
            self.labelset = LabelSet.from_dict(self.state["labelset"])
            model = load_checkpoint(self.state, where=str(resume)).model.train()
        else:
            self.labelset = build_label_set(
                self.train_data,
                vectors=cfg.word_vectors,
                name_map=cfg.name_map,
                tau=cfg.tau,
                cooccurrence=cfg.cooccurrence,
            )
            backbone: dict[str, Any] = {"backbone": cfg.backbone} if cfg.backbone else {}
            model = create_model(
                cfg.model,
                label_set=self.labelset,
                pool_ratio=cfg.pool_ratio,
                pretrained=cfg.pretrained,
                **backbone,
                **cfg.model_switches(),
                **dataset_settings(cfg.model, cfg.dataset),  # a head's published setting for the data set
            )
            if cfg.init:
                init_from_checkpoint(model, cfg.init)
        if self.test_data.labels != self.labelset.labels:
            raise MSRNError(f"the {self.test_data.split} split's labels differ from the training split's")
        # channels-last on CUDA: cuDNN's tensor-core convolutions work in it; on CPU the default layout
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        # torch's stubs omit Module.to's memory_format, which it takes (and which returns the module itself)
        model.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.model = use_fast_paths(model)  # the same numbers; fc1's gradient memory reused between steps

    def distribute_model(self) -> None:
        """self.net, what the training steps run: the model itself, or under torchrun its DistributedDataParallel
        wrapper (with synchronised BatchNorm on --sync-bn)."""
        if not dist.is_distributed():
            self.net: nn.Module = self.model
            return
        if self.cfg.sync_bn:
            if self.device.type == "cpu":
                raise MSRNError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm has no CPU implementation")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # a head that reads no deeper than layer3 leaves the later backbone layers without gradients
        shallow = max(getattr(getattr(self.model, "cfg", None), "depths", (3,))) < 3
        self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=shallow)

    def compile_model(self) -> None:
        """--compile: the training steps through torch.compile (the first steps compile; evaluation stays eager)."""
        if self.cfg.compile:
            # a compiled module is an OptimizedModule (an nn.Module); torch.compile's stubs say only "callable"
            self.net = cast(nn.Module, torch.compile(self.net))

    def build_optimiser(self) -> None:
        """The loss, the optimiser (SGD or AdamW) with its schedule, the fp16 gradient scaler and the weight
        average (--ema)."""
        cfg = self.cfg
        self.criterion = build_loss(
            cfg.loss, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, cfg.focal_gamma, cfg.focal_alpha
        )
        groups = self.model.param_groups(cfg.lr, cfg.lr_backbone)
        self.optimizer = make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        # a one-cycle schedule spans the run's steps: a resume must keep the epoch count it was planned for
        saved_epochs = None if self.state is None else self.state["config"]["epochs"]
        if cfg.schedule == "onecycle" and saved_epochs not in (None, cfg.epochs):
            raise MSRNError(
                f"--schedule onecycle was planned over {saved_epochs} epochs; resume without --epochs "
                f"(not {cfg.epochs}), or start a new run"
            )
        steps_per_epoch = math.ceil(len(self.loader) / cfg.grad_accum)
        self.scheduler = make_scheduler(
            self.optimizer, cfg.schedule, cfg.lr_steps, cfg.lr_gamma, cfg.epochs * steps_per_epoch
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16" and self.device.type == "cuda")
        self.ema = WeightEMA(self.model, cfg.ema, cfg.ema_warmup) if cfg.ema else None

    def build_loader(self) -> None:
        """The training loader: this process's share of each batch, in micro-batches of batch / --grad-accum."""
        cfg = self.cfg
        world = dist.world_size()
        if cfg.batch_size % (world * cfg.grad_accum):
            raise MSRNError(
                f"--batch-size {cfg.batch_size} must be a multiple of processes x --grad-accum "
                f"({world} x {cfg.grad_accum})"
            )
        self.rank_batch = cfg.batch_size // world
        self.micro_batch = self.rank_batch // cfg.grad_accum
        self.train_set = ImageDataset(
            self.train_data, TrainTransform(cfg.image_size, cfg.crop_scales), on_error=cfg.on_error
        )
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, shuffle=True, rank=dist.rank(), world=world)
        self.loader = build_loader(
            SeededView(self.train_set, cfg.seed),
            self.micro_batch,
            shuffle=False,
            workers=cfg.workers,
            seed=cfg.seed,
            sampler=self.sampler,
        )

    def start_or_restore(self) -> None:
        """Counters, history and best from zero (writing config.json), or as the resumed checkpoint left them;
        then the TensorBoard writer."""
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.best: Selected | None = None
        self.running_loss = [0.0, 0]
        self.pending: list[tuple[torch.Tensor, int, int]] = []  # micro-batch losses on the device, see read_losses
        if self.state is not None:
            self._restore(self.state)
        else:
            self.cfg_save()
        # event files from rank 0; a resumed run drops the events written after its checkpoint
        self.board = open_board(self.out / "tensorboard", self.global_step + 1) if dist.is_main() else None

    # -- state on disk ------------------------------------------------------------------------
    def cfg_save(self) -> None:
        if dist.is_main():
            atomic_write_json(self.out / "config.json", self.cfg.to_dict())

    def weights(self, which: str) -> nn.Module:
        """The live model or its moving average ("live" or "ema")."""
        if which != "ema":
            return self.model
        if self.ema is None:
            raise ValueError("this run keeps no moving average of the weights")
        return self.ema.module

    def checkpoint(self, full: bool, which: str = "live") -> dict:
        ckpt = model_state(self.weights(which), self.cfg.image_size, self.train_data.exif_orientation)
        ckpt.update(
            labelset=self.labelset.to_dict(),
            config=self.cfg.to_dict(),
            epoch=self.epoch,
            global_step=self.global_step,
            best=self.best.to_dict() if self.best else {},
            history=self.history,
        )
        if self.ema is not None:
            ckpt["weights"] = which  # which of the two state_dict holds
        if self.best is not None and self.best.thresholds is not None:
            ckpt["thresholds"] = torch.tensor(self.best.thresholds, dtype=torch.float32)
        if full:
            ckpt.update(
                step_in_epoch=self.step_in_epoch,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_state(),
                running_loss=list(self.running_loss),
            )
            if self.ema is not None:
                ckpt["ema"] = self.ema.state_dict()
        return ckpt

    def save(self, name: str, full: bool, which: str = "live") -> None:
        """Write a checkpoint from rank 0; call it on every rank (full saves sum the running loss)."""
        self.read_losses()
        if full:  # fold every rank's loss sums into rank 0's, which the checkpoint carries
            total = dist.sum_across(self.running_loss)
            self.running_loss = total if dist.is_main() else [0.0, 0]
            if self.board is not None:  # the events up to this checkpoint; a resume drops the later ones
                self.board.flush()
        if not all(bool(torch.isfinite(p).all()) for p in self.weights(which).parameters()):
            raise MSRNError(
                f"non-finite weights after step {self.global_step}; stopped without writing {name}, "
                "so the last good checkpoint is intact: lower --lr or check the data"
            )
        if dist.is_main():
            try:
                atomic_save_torch(self.checkpoint(full, which), self.out / name)
            except OSError as e:  # disk full, folder gone: the atomic write left the previous file as it was
                raise MSRNError(
                    f"cannot write {self.out / name} ({e.strerror or e}); the previous {name}, if any, is intact"
                ) from None

    def _restore(self, s: dict) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        set_rng_state(s["rng"])
        if self.ema is not None:
            if "ema" not in s:
                raise MSRNError("cannot resume: the checkpoint holds no EMA state although its run used --ema")
            self.ema.load_state_dict(s["ema"])
        self.epoch, self.step_in_epoch, self.global_step = s["epoch"], s["step_in_epoch"], s["global_step"]
        self.history, self.best = list(s["history"]), Selected.from_dict(s["best"])
        self.running_loss = list(s["running_loss"]) if dist.is_main() else [0.0, 0]  # saved sums are global
        log.info("resumed at epoch %d, step %d of that epoch", self.epoch + 1, self.step_in_epoch)

    # -- an epoch of training -------------------------------------------------------------------
    def train_epoch(self) -> None:
        """One pass over the training data (its rest, when resumed mid-epoch): an optimiser step every
        --grad-accum micro-batches, and one for the micro-batches left at the end."""
        cfg = self.cfg
        self.net.train()
        self.sampler.set_epoch(self.epoch, start=self.step_in_epoch * cfg.batch_size)
        steps = math.ceil(len(self.sampler) / self.rank_batch) + self.step_in_epoch
        self.bar = tqdm(
            total=steps,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None if dist.is_main() else True,
        )
        micro, last = 0, len(self.loader) - 1
        for i, (images, targets, _) in enumerate(self.loader):
            loss = self.forward_backward(images, targets, ends_step=micro + 1 == cfg.grad_accum or i == last)
            self.pending.append((loss, len(images), self.step_in_epoch))
            micro += 1
            if micro == cfg.grad_accum:
                self.optimizer_step()
                micro = 0
                self.bar.update(1)
        if micro:
            self.optimizer_step()
        self.read_losses()
        self.bar.close()

    def forward_backward(self, images: torch.Tensor, targets: torch.Tensor, ends_step: bool) -> torch.Tensor:
        """One micro-batch: the objective back-propagated; returns it, detached, on the device (read_losses
        reads it later, so that the host does not wait for the device every step)."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        # DDP averages gradients only on the micro-batch that ends an optimiser step
        with dist.grad_sync(getattr(self.net, "_orig_mod", self.net), ends_step):  # the DDP module under --compile
            with autocast(self.device, self.cfg.amp):
                gloss: torch.Tensor | float
                if isinstance(self.model, MSRN):  # the semantics once: the logits' rows and the group loss
                    sem = self.model.semantics()
                    logits, gloss = self.net(images, semantics=sem), sem.group_loss.float()
                else:
                    logits, gloss = self.net(images), 0.0
                loss = objective(self.criterion, logits, targets, gloss)
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        return loss.detach()

    def read_losses(self) -> None:
        """Bring the pending micro-batch losses to the host in one transfer: stop with one line at the first
        non-finite one, else add them to the running sums and give TensorBoard each optimiser step's mean.

        Called every SYNC_EVERY steps, before every checkpoint and at the end of the epoch: a non-finite
        loss is found before anything is written from the weights it spoilt."""
        if not self.pending:
            return
        values = torch.stack([loss for loss, _, _ in self.pending]).tolist()
        first_step = self.global_step - self.step_in_epoch  # global steps before this epoch
        step_loss: dict[int, list[float]] = {}
        for value, (_, count, step) in zip(values, self.pending, strict=True):
            if not math.isfinite(value):
                self.pending.clear()
                last_pt = self.out / "last.pt"
                kept = f"the last good checkpoint {last_pt} is intact" if last_pt.is_file() else "nothing saved yet"
                raise MSRNError(
                    f"non-finite loss ({value}) at epoch {self.epoch + 1}, step {step + 1}; "
                    f"stopped ({kept}): lower --lr or check the data"
                )
            self.running_loss[0] += value * count
            self.running_loss[1] += count
            sums = step_loss.setdefault(step, [0.0, 0])
            sums[0], sums[1] = sums[0] + value * count, sums[1] + count
        self.pending.clear()
        if self.board is not None:
            for step, (total, n) in step_loss.items():
                self.board.step(first_step + step + 1, total / n, self.optimizer)
        self.bar.set_postfix(loss=f"{self.running_loss[0] / max(1, self.running_loss[1]):.4f}")

    def optimizer_step(self) -> None:
        if self.cfg.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.schedule == "onecycle":
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step_in_epoch += 1
        self.global_step += 1
        if self.global_step % SYNC_EVERY == 0:
            self.read_losses()
        if self.cfg.save_every and self.global_step % self.cfg.save_every == 0:
            self.save("last.pt", full=True)
            self.saved_step = self.global_step
        self.stop_if_asked()

    def stop_if_asked(self) -> None:
        """At a step boundary: when any rank had a stop signal, write last.pt here (unless it is already this
        step's), wait for every rank, log one line and raise Stopped (docs/reliability.md, "Signals")."""
        signum = self.stop.agreed()
        if not signum:
            return
        if self.saved_step != self.global_step:
            self.save("last.pt", full=True)
            self.saved_step = self.global_step
        dist.barrier()  # no rank exits (and gets the group stopped by torchrun) before rank 0 has written
        if self.board is not None:
            self.board.close()
        status = self.stop.status(signum)
        log.info(
            "stopped on %s at epoch %d, step %d of that epoch (global step %d): %s/last.pt holds it; "
            "--resume continues exactly (exit status %d)",
            self.stop.describe(signum),
            self.epoch + 1,
            self.step_in_epoch,
            self.global_step,
            self.out,
            status,
        )
        raise Stopped(f"stopped on {self.stop.describe(signum)} at global step {self.global_step}", status)

    # -- the end of an epoch: evaluate, select, save --------------------------------------------
    def end_epoch(self, seconds: float) -> None:
        """Close the epoch, evaluate the live (and EMA) weights, log, then save best.pt when the selected
        weights are at least as good, and last.pt."""
        train_loss = self.close_epoch()
        results = self.evaluate_weights()
        self.history.append(history_entry(self.epoch, train_loss, seconds, results))
        if self.board is not None:
            self.board.epoch(
                self.global_step,
                train_loss,
                {k: (r.validation, r.test) for k, r in results.items()},
                self.labelset.labels,
                self.test_data.split,
            )
        which = self.select_weights(results)
        score = results[which].val_map
        best = None if self.best is None else self.best.score
        improved = score is None or best is None or score >= best
        val_txt = f" val mAP {score:.2f} |" if score is not None else ""
        tm = results[which].test
        log.info(
            "epoch %d/%d | loss %.4f |%s test mAP %s CF1 %.2f OF1 %.2f%s | %.0fs%s",
            self.epoch,
            self.cfg.epochs,
            train_loss,
            val_txt,
            map_text(tm),
            tm["CF1"],
            tm["OF1"],
            weights_text(results),
            seconds,
            " *" if improved else "",
        )
        if improved:  # best.pt before last.pt: a kill in between redoes this epoch's end, rewriting them alike
            self.keep_best(which, results[which])
        elif dist.is_main():
            self.write_history_plot()
        self.save("last.pt", full=True)
        self.saved_step = self.global_step

    def keep_best(self, which: str, result: Evaluation) -> None:
        """Record this epoch as the selected one and write best.pt from `which` weights, metrics.json and plots."""
        score = result.val_map
        self.best = best = Selected(
            epoch=self.epoch,
            score=score if score is not None else result.test["mAP"],
            selected_by="validation mAP" if score is not None else "last epoch",
            thresholds=None if result.thresholds is None else [float(t) for t in result.thresholds],
            weights=which if self.ema is not None else None,
        )
        self.save("best.pt", full=False, which=which)
        self.write_reports(result.test, best)

    def close_epoch(self) -> float:
        """Advance the step schedule and the counters to the next epoch; the epoch's training loss, over all
        processes."""
        if self.cfg.schedule == "step":
            self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        loss_sum, loss_count = dist.sum_across(self.running_loss)
        self.running_loss = [0.0, 0]
        return loss_sum / max(1, loss_count)

    def evaluate_weights(self) -> dict[str, Evaluation]:
        """Each kept set of weights evaluated: "live" (and "ema") -> its Evaluation."""
        results = {}
        for which in ("live", "ema") if self.ema is not None else ("live",):
            dist.broadcast_buffers(self.weights(which))  # rank 0's BatchNorm statistics: the ones best.pt gets
            results[which] = self.evaluate(self.weights(which))
        return results

    def evaluate(self, module: nn.Module) -> Evaluation:
        """Validation metrics (None without a validation split), the per-label thresholds tuned on it
        when asked for, and the test metrics at those thresholds, for one set of weights."""
        cfg = self.cfg
        vm, thresholds = None, None
        group_loss = model_group_loss(module)  # the reported losses are the training objective's
        module = with_tta(module, cfg.tta)
        if self.val_data is not None:
            vlogits = predict_logits(
                module, self.val_data, cfg.image_size, self.rank_batch, cfg.workers, self.device, cfg.amp, desc="val"
            )
            vm = score_metrics(vlogits, self.val_data.targets, group_loss=group_loss, loss=self.criterion)
            if cfg.tune_thresholds:
                thresholds = per_label_thresholds(sigmoid(vlogits.astype(np.float64)), self.val_data.targets)
        tlogits = predict_logits(
            module, self.test_data, cfg.image_size, self.rank_batch, cfg.workers, self.device, cfg.amp, desc="test"
        )
        return Evaluation(
            vm, thresholds, score_metrics(tlogits, self.test_data.targets, thresholds, group_loss, self.criterion)
        )

    def select_weights(self, results: dict[str, Evaluation]) -> str:
        """Which weights this epoch offers as best.pt: the better on validation (live on a tie); without a
        validation split nothing is picked on the test split, so the EMA weights when the run keeps them."""
        if self.val_data is not None:
            # an evaluation without a validation mAP ranks below any with one
            return max(results, key=lambda k: (results[k].val_map is not None, results[k].val_map or 0.0))
        return "ema" if self.ema is not None else "live"

    def write_history_plot(self) -> None:
        plot_history(self.history, self.out / "history.png")

    def write_reports(self, tm: dict, best: Selected) -> None:
        if not dist.is_main():
            return
        labels = self.labelset.labels
        report = {k: v for k, v in tm.items()}
        report.update(
            epoch=self.epoch,
            selected_by=best.selected_by,
            split=self.test_data.split,
            dataset=self.cfg.dataset,
            labels=labels,
            ap_by_label=dict(zip(labels, tm["ap_per_label"], strict=True)),
        )
        if best.weights is not None:
            report["weights"] = best.weights
        if best.thresholds is not None:
            report["thresholds_by_label"] = dict(zip(labels, best.thresholds, strict=True))
        atomic_write_json(self.out / "metrics.json", report)
        plot_ap_per_label(
            tm["ap_per_label"],
            labels,
            self.out / "ap_per_label.png",
            title=f"AP per label, {self.test_data.split} split, epoch {self.epoch}",
        )
        self.write_history_plot()

    def fit(self) -> Selected | None:
        """Train the remaining epochs; the selected epoch (self.best; None when no epoch was left to train)."""
        cfg = self.cfg
        log.info(
            "train %s: %d images (%s), test %d images (%s), %d labels, model %s, device %s%s",
            cfg.dataset,
            len(self.train_data),
            self.train_data.split,
            len(self.test_data),
            self.test_data.split,
            len(self.labelset.labels),
            cfg.model,
            self.device,
            f", DDP world size {dist.world_size()} ({torch.distributed.get_backend()})"
            if dist.is_distributed()
            else "",
        )
        while self.epoch < cfg.epochs:
            t0 = time.time()
            self.train_epoch()
            self.end_epoch(time.time() - t0)
            self.stop_if_asked()  # a signal during the evaluation: last.pt of this epoch end is written
        if self.train_set.skipped:
            log.info("skipped %d unreadable training images (--on-error skip)", self.train_set.skipped)
        if self.board is not None:
            self.board.close()
        return self.best


def train(cfg: TrainConfig, keep_epochs: bool = False, requeue_signal: str | None = None) -> Selected | None:
    """Train with `cfg` and return the selected epoch (Python API of `msrn train`).

    keep_epochs: when resuming, train to the run's own epoch count instead of `cfg.epochs`.
    SIGTERM, SIGINT and `requeue_signal` (e.g. "USR1") stop the run at a step boundary with last.pt
    written, raising Stopped (msrn.engine.preemption) whose `status` is the exit status to report.
    """
    requeue = parse_signal(requeue_signal)
    with setting_up():  # a value torch refuses (an optimiser's, a scheduler's): one line, no traceback
        trainer = Trainer(cfg, keep_epochs)
    try:
        shield_workers(trainer.loader, requeue)
        try:
            with StopSignals(requeue) as trainer.stop:
                best = trainer.fit()
        except Stopped:
            dist.teardown()  # every rank stopped at the same step, after the same collectives
            raise
        dist.teardown()  # after success or a stop only: a failed rank just exits and torchrun stops the others
    finally:
        if trainer.run_lock is not None:  # the run folder is free for the next run in this process
            trainer.run_lock.release()
    return best


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument(
        "--requeue-signal",
        metavar="SIG",
        help="a signal (e.g. USR1, as SLURM's --signal=USR1@90 sends) that means: save last.pt at the "
        "step in progress and exit with status 75 for the job script to requeue (SIGTERM and "
        "SIGINT always save and exit, with 143 and 130)",
    )
    p.epilog = INSTALL_HINT


def main(args: argparse.Namespace) -> int:
    if args.resume not in (None, "auto") and args.out is None:  # --resume FILE goes on in FILE's run folder
        args.out = str(Path(args.resume).parent)
    cfg = config_from_args(args)  # its run folder is settled: --out, else runs/DATASET-MODEL
    try:
        best = train(cfg, keep_epochs=args.epochs is None, requeue_signal=args.requeue_signal)
    except Stopped as e:
        return e.status
    if dist.is_main():
        kept = "no epoch left to train" if best is None else f"best.pt from epoch {best.epoch} ({best.selected_by})"
        print(f"done: {kept}; run folder {cfg.out}")
    return 0
