"""Budgets in env steps: stop a run once `train/env_steps` reaches `max_env_steps`."""

from __future__ import annotations

import lightning as L


class EnvStepBudget(L.Callback):
    """Sets `trainer.should_stop` after the training step (a meta-iteration, or one SAC gradient
    step) at which the module's env-step count reaches the budget; Lightning then ends the fit
    as at max_steps (checkpoint callbacks and meta_eval's at_end run as usual). Added by train.py
    when the top-level `max_env_steps` is set, which also lifts trainer.max_steps."""

    def __init__(self, max_env_steps: int):
        self.max_env_steps = max_env_steps
        self.reached = False  # train.py reports a run stopped here as finished

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "env_steps", 0) >= self.max_env_steps:
            trainer.should_stop = self.reached = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run resumed (ckpt_path=) at or past its budget is finished: no further iteration
        # (it used to run one, and replace the finished run's last.ckpt with it)
        self._check(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        self._check(trainer, pl_module)
