"""SIGINT and SIGTERM during training: finish the optimizer step, write a checkpoint, stop.

A cluster scheduler sends SIGTERM before it preempts a job, and Ctrl-C sends SIGINT. The first one only
raises a flag (:class:`StopSignals`); the loop checks it after each optimizer step, writes a checkpoint
and raises :class:`TrainingStopped`. With several processes the signal may reach only one of them, so
the flag is all-reduced after every step (one tiny collective) and all of them stop at the same step.
A second signal raises :class:`Interrupted` at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from gptlite.errors import Interrupted

__all__ = ["StopSignals", "TrainingStopped"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped by a signal after a complete optimizer step, with a checkpoint to resume from."""

    def __init__(self, signum: int, global_step: int, total_steps: int, checkpoint: Path) -> None:
        self.signum, self.global_step, self.total_steps, self.checkpoint = signum, global_step, total_steps, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after optimizer step {global_step} of "
                         f"{total_steps}; checkpoint {checkpoint}; continue with resume_from='latest'")


class StopSignals:
    """While active (``with``), SIGINT and SIGTERM request a stop instead of killing the process.

    Outside the main thread (where Python cannot install handlers) it does nothing, and a signal that was
    ignored when it started (nohup, a script's background job) stays ignored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                # A signal the launcher ignores stays ignored: a shell script's `cmd &` and nohup set SIGINT
                # to SIG_IGN so that Ctrl-C in the terminal leaves the background job running.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def agreed(self, accelerator) -> int | None:
        """The signal any process received (None if none did); every process must call it each step."""
        if accelerator.num_processes == 1:
            return self.signum
        received = torch.tensor([self.signum or 0], device=accelerator.device)
        signum = int(accelerator.reduce(received, reduction="max").item())
        return signum or None
