"""A progress bar that counts meta-iterations of the whole run, resumed runs included."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class IterationProgressBar(TQDMProgressBar):
    """Lightning's bar counts batches of the current epoch: the experience stream is one endless
    epoch, and a run resumed with ckpt_path= restarts mid-epoch, where Lightning calls no
    on_train_epoch_start, so its bar read "Training: 5/?" at meta-iteration 118 of 2000. This one
    reads trainer.global_step (one per meta-iteration, every method) out of trainer.max_steps."""

    def _reset_to_run(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)  # -1: no limit
        bar.n = trainer.global_step
        bar.set_description("Iteration")
        bar.refresh()

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self._reset_to_run(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._reset_to_run(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        bar.n = trainer.global_step
        if self.refresh_rate and trainer.global_step % self.refresh_rate == 0:
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar
