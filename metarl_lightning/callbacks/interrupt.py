"""Stop cleanly on SIGTERM, Ctrl-C or an env fault, with a loadable last.ckpt.

SIGTERM becomes a stop between two meta-iterations (Lightning's SIGTERMException after the batch's
hooks); we write last.ckpt there. The SIGTERM handler is ours, not Lightning's: Lightning 2.6's
handler calls `dist.broadcast` from inside the signal handler, i.e. at whatever point of the
iteration the signal lands, while the other rank may be in another collective (the gradient
all-reduce, the env-state gather) or may get its signal an instant later, past the end-of-batch
check: the ranks' collectives no longer pair up and the job hangs until SLURM's SIGKILL (seen in
CI: scancel, rank 0 logged the signal and never wrote last.ckpt). Ours only records the signal;
at the end of each meta-iteration the ranks agree on it (`reduce_boolean_decision`, one
all-reduce of one int, a point every rank reaches in the same order), so all ranks stop after the
same iteration even when only one got the signal or they got it in different iterations.

A first Ctrl-C asks for a clean stop too (`trainer.should_stop`: finish the current meta-iteration,
write last.ckpt in on_train_end) instead of interrupting an update half applied; a second Ctrl-C
aborts at once and keeps the last periodic checkpoint. `signum` records which signal stopped the
run: train.py exits with 128 + signum (130 Ctrl-C, 143 SIGTERM), the shell convention, so that a
scheduler or script can tell a stopped run from a finished one. last.ckpt is also written when
training ends normally, so that it always holds the final iteration (the periodic save may be up to
N-1 behind). An env fault (EnvFault: a worker died or an env raised, restarts exhausted) strikes
while collecting, before the iteration's update, so the module is whole: last.ckpt is written too
(without env state: resuming starts fresh envs). Checkpoint files are replaced atomically
(`checkpoints.AtomicCheckpointIO`), so a kill during a save never replaces the previous good file."""

from __future__ import annotations

import logging
import os
import signal

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message

from metarl_lightning.errors import EnvFault

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = os.path.join(dirpath, filename)
        self._previous_handler = None
        self._previous_sigterm = None
        self._trainer: L.Trainer | None = None
        self._stop_requested = False
        self._sigterm = False  # this rank got SIGTERM; all ranks stop once any did
        self.signum: int | None = None  # the signal that stopped the run, if any

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            # replaces Lightning's (registered before on_train_start, restored in its teardown)
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
            self._previous_handler = self._previous_sigterm = None

    def _on_sigterm(self, signum, frame) -> None:
        """Only records the signal (and, as Lightning's handler does, forwards it once to the
        ranks Lightning itself launched); the stop is agreed in on_train_batch_end."""
        trainer = self._trainer
        log.info(rank_prefixed_message(
            "Received SIGTERM: stopping after this meta-iteration", trainer.local_rank))
        if not self._sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        self._sigterm = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        # every rank, every iteration (an all-reduce when world_size > 1): any rank's SIGTERM
        # stops all of them here, before Lightning's own per-rank check that raises
        # SIGTERMException at the end of this batch
        if trainer.strategy.reduce_boolean_decision(self._sigterm, all=False):
            trainer._signal_connector.received_sigterm = True

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
        if self._previous_sigterm is not None:
            # only if still ours: Lightning's teardown may already have put back the original
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
