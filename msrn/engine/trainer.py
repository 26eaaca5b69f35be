"""The training loop (docs/design.md §7): one run's data, model, optimiser, schedule and state on disk.

files -> dataset -> loader -> model -> loss -> optimiser -> checkpoint/metrics/plots. The run
folder holds last.pt (everything needed to resume exactly), best.pt (weights, labels, graph),
metrics.json (the selected epoch's test metrics), config.json, log.txt and PNG plots; which epoch
best.pt holds is msrn.engine.selection's choice.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import cast

import torch
from torch import nn
from tqdm import tqdm

from msrn import distributed as dist
from msrn.data import ImageDataset
from msrn.data.loader import build_loader
from msrn.data.transforms import train_transform
from msrn.engine.config import TrainConfig
from msrn.engine.ema import WeightEMA
from msrn.engine.evaluate import autocast
from msrn.engine.losses import build_loss, objective
from msrn.engine.optim import make_optimizer, make_scheduler
from msrn.engine.preemption import Stopped, StopSignals
from msrn.engine.run_start import (
    labels_and_model,
    log,
    prepare_run_folder,
    read_resume_state,
    read_splits,
    resolve_resume,
    settle_config,
)
from msrn.engine.sampling import EpochSampler, SeededView, rng_state, set_rng_state
from msrn.engine.selection import (
    Evaluation,
    Selected,
    epoch_text,
    evaluate_splits,
    history_entry,
    select_weights,
    selected_epoch,
    write_reports,
)
from msrn.engine.tensorboard import open_board
from msrn.errors import MSRNError
from msrn.io import atomic_save_torch, atomic_write_json
from msrn.models import MSRN, model_state, use_fast_paths
from msrn.plots import plot_history

# optimiser steps between reads of the training losses to the host: each read waits for the device to
# finish, so reading every step would leave a GPU idle while the host queues the next step's kernels
SYNC_EVERY = 32


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
        # checked before any work and locked (rank 0, the one writer), logged into, the run seeded
        self.run_lock = prepare_run_folder(self.out, self.cfg.seed)
        self.train_data, self.val_data, self.test_data = read_splits(self.cfg)
        self.build_model(resume)
        self.distribute_model()
        self.compile_model()
        self.build_loader()
        self.build_optimiser()  # after the loader: a one-cycle schedule counts the steps of the run
        self.start_or_restore()
        self.stop = StopSignals()  # no signal handled until fit() runs inside train()'s `with`
        self.saved_step = -1  # the global step last.pt was last written at

    # -- building the run, in order --------------------------------------------------------------
    def build_model(self, resume: Path | None) -> None:
        """The label set and the model on the device: a resumed run's own, else built from the training
        labels (with --init, then given a checkpoint's weights)."""
        self.labelset, model = labels_and_model(self.cfg, self.state, resume, self.train_data)
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
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
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
            self.train_data, train_transform(cfg.augment, cfg.image_size, cfg.crop_scales), on_error=cfg.on_error
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

    def warm_up(self) -> list[float]:
        """Scale this step's rates by (step + 1) / warm-up steps while warming up (from the step count alone, so
        a resumed run warms up alike); return the scheduled rates to restore after the step."""
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        if self.global_step < self.warmup_steps:
            for group in self.optimizer.param_groups:
                group["lr"] *= (self.global_step + 1) / self.warmup_steps
        return scheduled

    def optimizer_step(self) -> None:
        if self.cfg.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        scheduled = self.warm_up()
        self.scaler.step(self.optimizer)
        for group, lr in zip(self.optimizer.param_groups, scheduled):  # the schedule goes on from its own rates
            group["lr"] = lr
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
        which = select_weights(results, self.val_data is not None, self.ema is not None)
        score = results[which].val_map
        best = None if self.best is None else self.best.score
        improved = score is None or best is None or score >= best
        log.info("%s", epoch_text(self.epoch, self.cfg.epochs, train_loss, results, which, seconds, improved))
        if improved:  # best.pt before last.pt: a kill in between redoes this epoch's end, rewriting them alike
            self.keep_best(which, results[which])
        elif dist.is_main():
            plot_history(self.history, self.out / "history.png")
        self.save("last.pt", full=True)
        self.saved_step = self.global_step

    def keep_best(self, which: str, result: Evaluation) -> None:
        """Record this epoch as the selected one and write best.pt from `which` weights, metrics.json and plots."""
        self.best = best = selected_epoch(self.epoch, which, result, self.ema is not None)
        self.save("best.pt", full=False, which=which)
        if dist.is_main():
            write_reports(self.out, result.test, best, self.labelset.labels, self.test_data.split, self.cfg.dataset)
            plot_history(self.history, self.out / "history.png")

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
            module = self.weights(which)
            results[which] = evaluate_splits(
                module, self.cfg, self.val_data, self.test_data, self.rank_batch, self.device, self.criterion
            )
        return results

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
