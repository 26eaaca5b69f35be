"""`msrn train` and its Python API `train(cfg)`: the options (TrainConfig, or a --config file under flags), the
signals that stop a run, and the loop (msrn.engine.trainer)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from msrn import distributed as dist
from msrn.engine.config import TrainConfig, config_from_args
from msrn.engine.preemption import Stopped, StopSignals, parse_signal, shield_workers
from msrn.engine.selection import Selected
from msrn.engine.tensorboard import INSTALL_HINT
from msrn.engine.trainer import Trainer
from msrn.errors import setting_up
from msrn.options import Options, add_options, option


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


@dataclass(frozen=True, kw_only=True)
class TrainCommandOptions(Options):
    """The options of `msrn train` that are not the run's configuration (TrainConfig)."""

    config: str | None = option(
        None,
        "take the options from this file: a run's config.json (reruns it) or a JSON or YAML mapping of option "
        "names to values; the dataset's preset fills what it leaves out, and flags given here override it",
        metavar="FILE",
    )
    requeue_signal: str | None = option(
        None,
        "a signal (e.g. USR1, as SLURM's --signal=USR1@90 sends) that means: save last.pt at the step in progress "
        "and exit with status 75 for the job script to requeue (SIGTERM and SIGINT always save and exit, with 143 "
        "and 130)",
        metavar="SIG",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `msrn train`: one per TrainConfig field (left out: the preset's or the --config file's value)."""
    add_options(p, TrainConfig, overlay=True)
    add_options(p, TrainCommandOptions)
    p.epilog = INSTALL_HINT


def main(args: argparse.Namespace) -> int:
    """Run `msrn train`: the config from the preset, the --config file and the flags; train; say where."""
    if args.resume not in (None, "auto") and args.out is None:  # --resume FILE goes on in FILE's run folder
        args.out = str(Path(args.resume).parent)
    command = TrainCommandOptions.from_args(args)
    cfg = config_from_args(args)  # its run folder is settled: --out, else runs/DATASET-MODEL
    try:
        best = train(cfg, keep_epochs=args.epochs is None, requeue_signal=command.requeue_signal)
    except Stopped as e:
        return e.status
    if dist.is_main():
        kept = "no epoch left to train" if best is None else f"best.pt from epoch {best.epoch} ({best.selected_by})"
        print(f"done: {kept}; run folder {cfg.out}")
    return 0
