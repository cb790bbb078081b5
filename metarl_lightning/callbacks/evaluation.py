"""Scheduled meta-test evaluation under Meta-World's protocol, logged as val/*."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from metarl_lightning.evaluation import Evaluator

_log = logging.getLogger(__name__)


class MetaEvalCallback(L.Callback):
    """Every `every_n_steps` meta-iterations (and after the last one) run the official protocol
    and log `val/success_rate`, `val/return`, `val/success_rate/<task>`. The evaluation envs are
    built on first use, for the run's benchmark (`trainer.datamodule.info`), and reused."""

    def __init__(self, every_n_steps: int, split: str = "test", seed: int = 1,
                 at_end: bool = True, **evaluator_kwargs):
        self.every_n_steps, self.at_end = every_n_steps, at_end
        self.kwargs = dict(split=split, seed=seed, **evaluator_kwargs)
        self.evaluator: Evaluator | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        step = trainer.global_step
        # the last step: max_steps reached, or stopped by the env-step budget (EnvStepBudget)
        last = (trainer.max_steps > 0 and step >= trainer.max_steps) or trainer.should_stop
        if step % self.every_n_steps and not (self.at_end and last):
            return
        # DDP: rank 0 evaluates (the parameters are the same on every rank) while the others
        # wait in the broadcast, then every rank holds the same val/* metrics.
        log, result = None, None
        if trainer.is_global_zero:
            if self.evaluator is None:
                self.evaluator = Evaluator(trainer.datamodule.info, **self.kwargs)
            result = self.evaluator.run(pl_module)
            log = {"val/success_rate": result.success_rate, "val/return": result.mean_return}
            log.update({f"val/success_rate/{task}": v for task, v in result.per_task.items()})
            log["val/env_steps"] = float(getattr(pl_module, "env_steps", 0))  # x-axis
            _log.info("meta-test at iteration %d (%s env steps): val/success_rate %.3f, "
                      "val/return %.1f (%s split, %.0f s)", step, f"{int(log['val/env_steps']):,}",
                      result.success_rate, result.mean_return, result.split, result.seconds)
        log = trainer.strategy.broadcast(log, src=0)
        # Straight to the loggers: a value logged through `self.log` in a batch hook is re-logged
        # on every later step. callback_metrics is what ModelCheckpoint(monitor=...) reads.
        for logger in trainer.loggers:  # x-axis: env steps, as for train/* (algorithms/base.py)
            logger.log_metrics(log, step=int(log["val/env_steps"]))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in log.items()})
        trainer.progress_bar_metrics["val_success"] = log["val/success_rate"]
        if result is not None:
            self._wandb_table(trainer, result)

    @staticmethod
    def _wandb_table(trainer: L.Trainer, result) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                try:
                    logger.log_table(key="val/per_task_success", columns=["task", "success"],
                                     data=[[k, v] for k, v in result.per_task.items()])
                except Exception as err:  # noqa: BLE001  (a table is nice-to-have)
                    rank_zero_warn(f"could not log the W&B per-task table: {err}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning skips teardown hooks on errors

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None
