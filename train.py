"""Train a meta-policy: `python train.py benchmark=ml10 model.hidden_dim=256`.

Thin by design: validate, seed, instantiate, fit, return metrics. `train(cfg)` is importable
(tests call it in-process); `main` returns `cfg.optimized_metric` for Hydra sweepers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from typing import NoReturn

os.environ.setdefault("WANDB_MODE", "offline")  # never prompt or touch the network by default

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metarl_lightning import config as schema
from metarl_lightning.build import build_module, recurrent_info_in_obs
from metarl_lightning.checkpoints import AtomicCheckpointIO, check_resumable
from metarl_lightning.cli import check_overrides
from metarl_lightning.data import MetaWorldDataModule
from metarl_lightning.errors import EnvFault
from metarl_lightning.types import ConfigError

# Known, harmless: we use the `dataloader_iter` training_step on purpose (see maml_ppo.py).
warnings.filterwarnings("ignore", message=".*dataloader_iter.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a group of named components (loggers, callbacks)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    schema.validate(cfg)
    # hydra/launcher=joblib runs jobs in loky workers whose default start method is "loky",
    # which the processes they spawn (env workers, DDP ranks) cannot resolve.
    if mp.get_start_method(allow_none=True) not in mp.get_all_start_methods():
        mp.set_start_method("spawn", force=True)
    L.seed_everything(cfg.seed, workers=True)
    b = cfg.benchmark
    datamodule = MetaWorldDataModule(
        benchmark=b.name, env_name=b.env_name, meta_batch_size=b.meta_batch_size,
        episodes_per_task=cfg.algorithm.episodes_per_task, max_episode_steps=b.max_episode_steps,
        use_one_hot=b.use_one_hot, reward_function_version=b.reward_function_version,
        seed=cfg.seed, num_workers=cfg.data.num_workers, vector_strategy=cfg.data.vector_strategy,
        env_restarts=cfg.data.env_restarts, collector=cfg.data.collector,
        recurrent_info_in_obs=recurrent_info_in_obs(cfg),
    )
    module = build_module(cfg, datamodule.info)  # policy sizes from the benchmark
    # Plain containers only: checkpoints must load with torch.load(weights_only=True).
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.ckpt_path is not None:
        check_resumable(cfg.ckpt_path, module)
    loggers = _instantiate_all(cfg.logger)
    callbacks = _instantiate_all(cfg.callbacks)
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                     plugins=[AtomicCheckpointIO()])
    for logger in loggers:
        logger.log_hyperparams(module.run_config)
        if type(logger).__name__ == "WandbLogger":  # W&B curves against env steps, not updates
            logger.experiment.define_metric("train/env_steps")
            logger.experiment.define_metric("train/*", step_metric="train/env_steps")
            logger.experiment.define_metric("perf/*", step_metric="train/env_steps")
            logger.experiment.define_metric("val/env_steps")
            logger.experiment.define_metric("val/*", step_metric="val/env_steps")
    print(f"{module.name}, policy: {module.policy.num_params():,} parameters; benchmark {b.name} "
          f"{datamodule.info.train_classes if b.name.endswith('1') else ''}; "
          f"output: {cfg.paths.output_dir}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    finally:
        _finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def _finish_wandb() -> None:
    """Jobs of a sweep share a process (basic launcher, joblib workers): without this the next
    job's WandbLogger would attach to this job's still-open W&B run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def objective(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweeper optimizes: `optimized_metric` as logged by the run (None: nothing)."""
    if name is None:
        return None
    if name not in metrics:
        logged = ", ".join(sorted(k for k in metrics if "/" in k and k.count("/") == 1))
        raise ConfigError(f"optimized_metric={name} was not logged by this run; logged: {logged}."
                          " Set optimized_metric to one of them (e.g. train/success_post), or "
                          "keep callbacks.meta_eval.at_end=true for val/*")
    return metrics[name]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if multirun:
            schema.check_multirun(cfg)
        metrics, _ = train(cfg)
    except ConfigError as err:
        _exit(err)
    except EnvFault as err:  # the worker's traceback is in the message; no Python traceback here
        ckpt = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
        print(f"{err}\nerror: an environment failed (above); set data.env_restarts=N to restart "
              f"envs automatically; resume with ckpt_path={ckpt}", file=sys.stderr)
        sys.exit(1)
    try:
        return objective(metrics, cfg.optimized_metric)
    except ConfigError as err:
        if multirun:  # a sweeper must not record a trial without its value
            _exit(err)
        print(f"warning: {err}", file=sys.stderr)  # a single run has no one to return it to
        return None


def _exit(err: ConfigError) -> NoReturn:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    check_overrides("train")
    main()
