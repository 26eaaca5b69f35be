"""Stopping a training run on a signal at a step boundary, so that the work done is saved.

SIGTERM (a spot instance taken back, `kill`, a scheduler's time limit), SIGINT (Ctrl-C) and an
optional requeue signal (SLURM's `--signal=USR1@90`) ask the run to stop: the optimiser step in
progress finishes, last.pt is written at that step and the process exits with STATUS. A second
signal exits at once. Under torchrun every rank learns of a signal that any rank received at the
same step boundary (one all-reduce of one integer per step), so every rank stops at that step.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from torch.utils.data import DataLoader

from msrn import distributed as dist
from msrn.errors import MSRNError

REQUEUE_STATUS = 75  # EX_TEMPFAIL (sysexits.h): "try again later", the job script's cue to requeue
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, as a shell reports a kill
# torchrun passes a terminal's Ctrl-C on to its workers, which had it from the terminal already:
# a repeat this soon after the first signal is that copy, not a second request
REPEAT_S = 1.0


class Stopped(Exception):
    """The run stopped on a signal after writing last.pt; `status` is the process's exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def parse_signal(name: str | None) -> signal.Signals | None:
    """`USR1`, `SIGUSR1` or a number as a signal; None for none. One line for a name that is no signal."""
    if name is None or name.strip().lower() in ("", "none"):
        return None
    text = name.strip().upper()
    try:
        sig = (
            signal.Signals(int(text))
            if text.isdigit()
            else signal.Signals[text if text.startswith("SIG") else "SIG" + text]
        )
    except (KeyError, ValueError):
        raise MSRNError(f"--requeue-signal {name!r} is not a signal: give a name such as USR1 or USR2") from None
    if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGINT, signal.SIGTERM):
        raise MSRNError(
            f"--requeue-signal {name}: choose a signal of its own (USR1, USR2, HUP...); SIGTERM and "
            "SIGINT already stop the run, SIGKILL and SIGSTOP cannot be caught"
        )
    return sig


def _ignore_stop_signals(init: Callable[[int], None] | None, signals: tuple[int, ...], worker_id: int) -> None:
    """A loader worker's start: ignore the stop signals, then the loader's own worker_init_fn."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    if init is not None:
        init(worker_id)


def shield_workers(loader: DataLoader, requeue: signal.Signals | None) -> None:
    """Make the loader's worker processes ignore the stop signals.

    A signal sent to the whole process group (Ctrl-C, SLURM's step signals, `kill -TERM -PGID`)
    reaches the workers too; torch's worker handler dies on SIGTERM, and the main process would
    then fail the step it is finishing. The main process shuts its workers down itself.
    """
    if loader.num_workers > 0:
        stops = (signal.SIGTERM, signal.SIGINT) + ((requeue,) if requeue is not None else ())
        loader.worker_init_fn = functools.partial(_ignore_stop_signals, loader.worker_init_fn, stops)


def status_of(signum: int, requeue: signal.Signals | None) -> int:
    """The exit status after a stop on `signum`."""
    if requeue is not None and signum == requeue:
        return REQUEUE_STATUS
    return STATUS.get(signal.Signals(signum), 128 + signum)


class StopSignals:
    """While active (a `with` block in the main thread), the stop signals set a request instead of
    killing the process; a second one (after REPEAT_S) exits at once with the first one's status."""

    def __init__(self, requeue: signal.Signals | None = None) -> None:
        self.requeue = requeue
        self.signals = [signal.SIGTERM, signal.SIGINT] + ([requeue] if requeue is not None else [])
        self.signum = 0  # the first signal received here, 0 for none
        self._when = 0.0
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}  # signal's handlers

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python takes signals there only
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.signum:
            self.signum, self._when = signum, time.monotonic()
            return
        if time.monotonic() - self._when < REPEAT_S:
            return
        os.write(
            2, f"msrn train: second signal ({signal.Signals(signum).name}): exiting now, without saving\n".encode()
        )
        os._exit(self.status(self.signum))

    def status(self, signum: int) -> int:
        return status_of(signum, self.requeue)

    def agreed(self) -> int:
        """The signal that stops every rank at this step boundary (0: go on): this rank's, or under
        torchrun the largest number any rank received. Every rank must call it at the same steps."""
        return dist.max_across(self.signum)

    def describe(self, signum: int) -> str:
        name = signal.Signals(signum).name
        return f"{name} (requeue)" if self.requeue is not None and signum == self.requeue else name
