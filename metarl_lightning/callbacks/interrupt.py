"""Stop cleanly on SIGTERM, Ctrl-C or an env fault, with a loadable last.ckpt.

Lightning already turns SIGTERM into a stop between two meta-iterations (SIGTERMException after
the batch's hooks); we write last.ckpt there. A first Ctrl-C asks for a clean stop too
(`trainer.should_stop`: finish the current meta-iteration, write last.ckpt in on_train_end)
instead of interrupting an update half applied; a second Ctrl-C aborts at once and keeps the last
periodic checkpoint. `signum` records which signal stopped the run: train.py exits with 128 +
signum (130 Ctrl-C, 143 SIGTERM), the shell convention, so that a scheduler or script can tell a
stopped run from a finished one. last.ckpt is also written when training ends normally, so that it
always holds the final iteration (the periodic save may be up to N-1 behind). An env fault
(EnvFault: a worker died or an env raised, restarts exhausted) strikes while collecting, before
the iteration's update, so the module is whole: last.ckpt is written too (without env state:
resuming starts fresh envs). Checkpoint files are replaced atomically
(`checkpoints.AtomicCheckpointIO`), so a kill during a save never replaces the previous good file."""

from __future__ import annotations

import logging
import os
import signal

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metarl_lightning.errors import EnvFault

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = os.path.join(dirpath, filename)
        self._previous_handler = None
        self._trainer: L.Trainer | None = None
        self._stop_requested = False
        self.signum: int | None = None  # the signal that stopped the run, if any

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (e.g. some launchers): leave Ctrl-C alone
            self._previous_handler = None

    def _on_sigint(self, signum, frame) -> None:
        trainer = self._trainer
        self.signum = signal.SIGINT
        if trainer is None or self._stop_requested:
            raise KeyboardInterrupt
        log.warning("Ctrl-C: stopping after this meta-iteration and writing last.ckpt "
                    "(Ctrl-C again to abort now)")
        self._stop_requested = True
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 and not trainer.fast_dev_run:
            self._save(trainer, interrupted=self._stop_requested)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):
            self.signum = signal.SIGTERM
        if isinstance(exception, SIGTERMException | EnvFault) and trainer.global_step > 0:
            self._save(trainer, interrupted=True)

    def _save(self, trainer: L.Trainer, interrupted: bool) -> None:
        trainer.save_checkpoint(self.path)
        if interrupted and trainer.is_global_zero:
            log.warning("interrupted at meta-iteration %d; resume with ckpt_path=%s",
                        trainer.global_step, self.path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
