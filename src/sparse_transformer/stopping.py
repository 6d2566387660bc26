"""How a training run stops before its end, without losing or faking anything.

Signals: SIGTERM (a cluster's time limit or preemption: SLURM sends it, then SIGKILL
after its KillWait, 30 s by default; `kill`) and SIGINT (Ctrl-C). Lightning 2.6 notes a
SIGTERM and, at the end of the current batch, raises SIGTERMException on every rank - a
SystemExit with status 0, which would tell a workflow the stage succeeded. `StopOnSignal`
routes SIGINT through the same handler, saves last.ckpt at the step reached when the
exception passes, and `train` then raises `Stopped`: the command exits with 143
(SIGTERM) or 130 (SIGINT), as a shell reports a process a signal ended. A second Ctrl-C
stops at once (Lightning's KeyboardInterrupt) without a checkpoint.

Losses: `FiniteLoss` stops training when the loss is NaN or infinite, before any
checkpoint holds the damage. Each step and-s a flag on the device (no host sync, so CUDA
graphs keep working); the flag is read at logging steps, where Lightning reads values
anyway, and before every checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .errors import UserError


class LossNotFinite(UserError):
    """Training produced a NaN or infinite loss."""


class StopOnSignal(Callback):
    """Saves `path` when a SIGTERM or SIGINT stops training: `signal` is the signal
    received, `saved_step` the step saved (None when a second Ctrl-C cut it short)."""

    def __init__(self, path: Path):
        self.path = path
        self.signal: int | None = None
        self.saved_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has installed its SIGTERM handler by now (and restores every handler,
        # this one included, when fitting ends).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._interrupted)

    def _interrupted(self, signum: int, frame: Any) -> None:
        if self.signal == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal = signal.SIGINT
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if callable(lightning_handler):
            lightning_handler(signum, frame)  # stop every rank after this batch, as on SIGTERM

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # raised between batches: the state is whole
            self.signal = self.signal or signal.SIGTERM
            trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls it; the strategy writes
            self.saved_step = trainer.global_step


class FiniteLoss(Callback):
    """Raises LossNotFinite, naming the steps and the last checkpoint, once a training loss
    was not finite. Every checkpoint is written after a check, so `last` (the folder's
    last.ckpt) always holds finite losses."""

    def __init__(self, every: int, last: Path):
        self.every, self.last = every, last
        self.finite: torch.Tensor | None = None  # on the device: every loss since the last check was finite
        self.checked_step = 0
        self.saved_step: int | None = None  # the step last.ckpt holds

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.checked_step = trainer.global_step  # restored from the checkpoint resumed, if any
        self.saved_step = trainer.global_step if trainer.ckpt_path else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        finite = torch.isfinite(outputs["loss"].detach())
        self.finite = finite if self.finite is None else self.finite & finite
        if trainer.global_step % self.every == 0:
            self._check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._check(trainer)
        self.saved_step = trainer.global_step

    def _check(self, trainer: L.Trainer) -> None:
        finite = True if self.finite is None else bool(self.finite)
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):  # every rank stops together
            saved = ("no checkpoint was written" if self.saved_step is None
                     else f"{self.last} holds step {self.saved_step}, before it")
            raise LossNotFinite(
                f"the training loss was not finite between steps {self.checked_step + 1} and {trainer.global_step} "
                f"({saved}): lower train.learning_rate or check the data, then resume"
            )
        self.finite, self.checked_step = None, trainer.global_step
