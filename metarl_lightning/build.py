"""A run's policy and algorithm module from its config. train.py and checkpoints.load_run
(evaluate.py) both build through here, so a checkpoint is rebuilt exactly as it was trained."""

from __future__ import annotations

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

from metarl_lightning.envs.benchmarks import ACTION_DIM, BenchmarkInfo, describe
from metarl_lightning.errors import ConfigError


def recurrent_info_in_obs(cfg: Any) -> bool:
    """Whether the algorithm wants Meta-World's recurrent info in the observation (RL²)."""
    return bool(cfg.algorithm.get("recurrent_info_in_obs", False))


def benchmark_info(cfg: Any) -> BenchmarkInfo:
    """The run's benchmark facts, the one place they are read from the config (train.py,
    evaluate.py through checkpoints.load_run, config.validate)."""
    from metarl_lightning.config import BenchmarkConfig

    b = cfg.benchmark
    return describe(b.name, b.env_name, b.use_one_hot, recurrent_info_in_obs(cfg),
                    max_episode_steps=b.max_episode_steps,
                    reward_function_version=b.reward_function_version,
                    fast_step=b.get("fast_step", BenchmarkConfig.fast_step))  # (older runs: no key)


def build_module(cfg: Any, info: BenchmarkInfo):
    """Sizes known only now are passed at instantiation (lightning-hydra-template style);
    `num_tasks` only to models that take it (model=multihead_mlp)."""
    sizes: dict[str, Any] = {"obs_dim": info.obs_dim, "action_dim": ACTION_DIM}
    model_cls = get_class(cfg.model._target_)
    # An algorithm with networks of its own (MT-SAC's twin Q critics) builds them from the same
    # model keys: `policy_class(model target) -> (class, extra kwargs)`.
    policy_class = getattr(get_class(cfg.algorithm._target_), "policy_class", None)
    if policy_class is not None:
        model_cls, extra = policy_class(cfg.model._target_)
        sizes.update(extra, _target_=f"{model_cls.__module__}.{model_cls.__qualname__}")
    if "num_tasks" in inspect.signature(model_cls).parameters:
        sizes["num_tasks"] = len(info.train_classes)
    policy = _instantiate(cfg.model, **sizes)
    return _instantiate(cfg.algorithm, policy=policy)


def _instantiate(node: Any, **kwargs):
    """hydra's instantiate, with a ConfigError a constructor raises (e.g. model.log_std_min >=
    log_std_max) passed on as itself: train.py reports it as one line, not as Hydra's
    multi-line InstantiationException around it."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise
