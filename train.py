"""Train a meta-policy: `python train.py benchmark=ml10 model.hidden_dim=256`.

Thin by design: validate, seed, instantiate, fit, return metrics. `train(cfg)` is importable
(tests call it in-process); `main` returns `cfg.optimized_metric` for Hydra sweepers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from typing import NoReturn

os.environ.setdefault("WANDB_MODE", "offline")  # never prompt or touch the network by default

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from metarl_lightning import config as schema
from metarl_lightning import runlog
from metarl_lightning.build import benchmark_info, build_module
from metarl_lightning.callbacks import CheckpointOnInterrupt, EnvStepBudget
from metarl_lightning.checkpoints import AtomicCheckpointIO, check_resumable, read_checkpoint
from metarl_lightning.cli import check_overrides
from metarl_lightning.data import MetaWorldDataModule
from metarl_lightning.errors import EnvFault
from metarl_lightning.loggers import WandbRunId, build_loggers
from metarl_lightning.types import ConfigError

log = logging.getLogger("train")
runlog.quiet_warnings()  # before Lightning and the env workers start


def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a group of named components (loggers, callbacks)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> tuple[dict[str, float], dict]:
    """Returns (metrics, objects); objects["stopped_by"] is the signal number that stopped the
    run early (SIGINT/SIGTERM) or None."""
    runlog.setup_logging()
    schema.validate(cfg)
    _gradient_clip_alias(cfg)
    # hydra/launcher=joblib runs jobs in loky workers whose default start method is "loky",
    # which the processes they spawn (env workers, DDP ranks) cannot resolve.
    if mp.get_start_method(allow_none=True) not in mp.get_all_start_methods():
        mp.set_start_method("spawn", force=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    info = benchmark_info(cfg)  # the benchmark's facts, built once; callbacks read them from
    datamodule = MetaWorldDataModule(  # trainer.datamodule.info
        benchmark=info, meta_batch_size=cfg.benchmark.meta_batch_size,
        episodes_per_task=cfg.algorithm.episodes_per_task,
        seed=cfg.seed, num_workers=cfg.data.num_workers, vector_strategy=cfg.data.vector_strategy,
        env_restarts=cfg.data.env_restarts, collector=cfg.data.collector,
        overlap=cfg.data.overlap,
    )
    module = build_module(cfg, info)  # policy sizes from the benchmark
    # Plain containers only: checkpoints must load with torch.load(weights_only=True).
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    resume = None
    if cfg.ckpt_path is not None:
        check_resumable(cfg.ckpt_path, module)
        resume = read_checkpoint(cfg.ckpt_path)
    if cfg.get("print_config", True) and rank_zero_only.rank == 0:
        runlog.print_config_tree(cfg, os.path.join(cfg.paths.output_dir, "config_tree.log"))
    loggers = build_loggers(cfg, resume)
    callbacks = _instantiate_all(cfg.callbacks)
    if cfg.get("max_env_steps") is not None:
        # first, so that meta_eval's at_end sees the stop in the same step
        callbacks.insert(0, EnvStepBudget(int(cfg.max_env_steps)))
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        callbacks.append(WandbRunId())
    if cfg.trainer.enable_model_summary:  # Lightning adds its own only if none is given
        callbacks.append(runlog.QuietModelSummary())
    if not cfg.trainer.enable_progress_bar:  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    # An env-step budget replaces the iteration count as the stop (trainer.max_steps still sets
    # the PPO schedulers' horizon, ${trainer.max_steps} in their config).
    budget = {"max_steps": -1} if cfg.get("max_env_steps") is not None else {}
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                     plugins=[AtomicCheckpointIO()], gradient_clip_val=None,
                                     **budget)
    for logger in loggers:
        logger.log_hyperparams(module.run_config)
        if type(logger).__name__ == "WandbLogger":  # W&B curves against env steps, not updates
            logger.experiment.define_metric("train/env_steps")
            logger.experiment.define_metric("train/*", step_metric="train/env_steps")
            logger.experiment.define_metric("perf/*", step_metric="train/env_steps")
            logger.experiment.define_metric("val/env_steps")
            logger.experiment.define_metric("val/*", step_metric="val/env_steps")
    if rank_zero_only.rank == 0:
        runlog.log_start(cfg, module.name, module.policy.num_params(), cfg.ckpt_path)
    interrupt = next((c for c in callbacks if isinstance(c, CheckpointOnInterrupt)), None)
    status, stopped_by, start = "finished", None, time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except SIGTERMException:  # Lightning stopped between two iterations; last.ckpt is written
        status, stopped_by = "stopped by SIGTERM", signal.SIGTERM
    except SystemExit:  # Lightning's exit(1) after a second Ctrl-C
        if interrupt is None or interrupt.signum != signal.SIGINT:
            raise
        status, stopped_by = "aborted by a second Ctrl-C", signal.SIGINT
    except EnvFault:
        status = "stopped by an environment fault"
        raise
    except BaseException as err:
        status = f"failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        raise
    finally:
        _finish_wandb()
        if status == "finished" and interrupt is not None and interrupt.signum == signal.SIGINT:
            status, stopped_by = "stopped by Ctrl-C", signal.SIGINT
        elif (status == "finished" and not trainer.fast_dev_run
              and not any(isinstance(c, EnvStepBudget) and c.reached for c in callbacks)
              and trainer.global_step < cfg.trainer.max_steps):
            status = f"stopped early (trainer.max_time={cfg.trainer.get('max_time')} or a callback)"
        if rank_zero_only.rank == 0:
            runlog.log_end(status, trainer, module, cfg.paths.output_dir,
                           time.perf_counter() - start,
                           None if status == "finished" else _resume_command())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule,
                     "stopped_by": stopped_by}


def _gradient_clip_alias(cfg: DictConfig) -> None:
    """trainer.gradient_clip_val, the Lightning key users reach for: with manual optimisation
    Lightning cannot clip, so it sets the algorithm's own clipping (algorithm.max_grad_norm)."""
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is None:
        return
    if "max_grad_norm" not in cfg.algorithm:
        raise ConfigError("trainer.gradient_clip_val: this algorithm has no gradient-norm "
                          "clipping; drop trainer.gradient_clip_val")
    cfg.algorithm.max_grad_norm = float(clip)
    log.info("trainer.gradient_clip_val=%s: clipping the global grad norm through "
             "algorithm.max_grad_norm (manual optimisation)", clip)


def _resume_command() -> str:
    """This run's command line without ckpt_path and hydra.* overrides."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under hydra.main (tests call train() directly)
        overrides = []
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("ckpt_path=", "hydra."))]
    return " ".join(["python train.py", *keep])


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
        metrics, objs = train(cfg)
    except ConfigError as err:
        _exit(err)
    except EnvFault as err:  # the worker's traceback is in the message; no Python traceback here
        ckpt = os.path.join(cfg.paths.output_dir, "checkpoints", "last.ckpt")
        msg = (f"{err}\nerror: an environment failed (above); set data.env_restarts=N to restart "
               f"envs automatically; resume with ckpt_path={ckpt}")
        print(msg, file=sys.stderr)
        runlog.to_file(logging.ERROR, msg)
        sys.exit(1)
    if objs["stopped_by"] is not None:  # 130 (Ctrl-C) / 143 (SIGTERM): not a finished run
        sys.exit(128 + int(objs["stopped_by"]))
    try:
        return objective(metrics, cfg.optimized_metric)
    except ConfigError as err:
        if multirun:  # a sweeper must not record a trial without its value
            _exit(err)
        log.warning("%s", err)  # a single run has no one to return it to
        return None


def _exit(err: ConfigError) -> NoReturn:
    print(f"error: {err}", file=sys.stderr)
    runlog.to_file(logging.ERROR, f"error: {err}")
    sys.exit(2)


if __name__ == "__main__":
    check_overrides("train")
    main()
