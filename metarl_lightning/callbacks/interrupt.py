"""Stop cleanly on SIGTERM, Ctrl-C or an env fault, with a loadable last.ckpt.

Lightning already turns SIGTERM into a stop between two meta-iterations (SIGTERMException
after the batch's hooks); we write last.ckpt there. A first Ctrl-C asks for a clean stop too
(`trainer.should_stop`: finish the current meta-iteration, write last.ckpt in on_train_end,
exit 0) instead of interrupting an update half applied; a second Ctrl-C aborts at once and
keeps the last periodic checkpoint. An env fault (EnvFault: a worker died or an env raised,
restarts exhausted) strikes while collecting, before the iteration's update, so the module is
whole: last.ckpt is written too (without env state: resuming starts fresh envs). Checkpoint files
are replaced atomically (`checkpoints.AtomicCheckpointIO`), so a kill during a save never
replaces the previous good file.
"""

from __future__ import annotations

import os
import signal
import sys

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metarl_lightning.errors import EnvFault


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = os.path.join(dirpath, filename)
        self._previous_handler = None
        self._trainer: L.Trainer | None = None
        self._stop_requested = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (e.g. some launchers): leave Ctrl-C alone
            self._previous_handler = None

    def _on_sigint(self, signum, frame) -> None:
        trainer = self._trainer
        if trainer is None or self._stop_requested:
            raise KeyboardInterrupt
        print("\nCtrl-C: stopping after this meta-iteration and writing last.ckpt "
              "(Ctrl-C again to abort now)", file=sys.stderr, flush=True)
        self._stop_requested = True
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_requested and trainer.global_step > 0:
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException | EnvFault) and trainer.global_step > 0:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        rank_zero_info(f"interrupted at meta-iteration {trainer.global_step}; "
                       f"resume with ckpt_path={self.path}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
