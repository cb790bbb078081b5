"""Train a meta-policy: `python train.py benchmark=ml10 model.hidden_dim=256`.

Thin by design: validate, seed, instantiate, fit, return metrics. `train(cfg)` is importable
(tests call it in-process); `main` returns `cfg.optimized_metric` for Hydra sweepers.
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("WANDB_MODE", "offline")  # never prompt or touch the network by default

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metarl_lightning import config as schema
from metarl_lightning.build import build_module, recurrent_info_in_obs
from metarl_lightning.cli import check_overrides
from metarl_lightning.data import MetaWorldDataModule
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
    L.seed_everything(cfg.seed, workers=True)
    b = cfg.benchmark
    datamodule = MetaWorldDataModule(
        benchmark=b.name, env_name=b.env_name, meta_batch_size=b.meta_batch_size,
        episodes_per_task=cfg.algorithm.episodes_per_task, max_episode_steps=b.max_episode_steps,
        use_one_hot=b.use_one_hot, reward_function_version=b.reward_function_version,
        seed=cfg.seed, num_workers=cfg.data.num_workers, vector_strategy=cfg.data.vector_strategy,
        recurrent_info_in_obs=recurrent_info_in_obs(cfg),
    )
    module = build_module(cfg, datamodule.info)  # policy sizes from the benchmark
    # Plain containers only: checkpoints must load with torch.load(weights_only=True).
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    loggers = _instantiate_all(cfg.logger)
    callbacks = _instantiate_all(cfg.callbacks)
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
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
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    check_overrides("train")
    main()
