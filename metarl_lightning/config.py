"""Structured config schemas. Registered with Hydra's ConfigStore so that a misspelt key or a
value of the wrong type is rejected at composition time, before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # MT1, MT10, MT25, MT50, ML1, ML10, ML25, ML45
    env_name: str | None = None  # the task of ML1/MT1, e.g. reach-v3
    meta_batch_size: int = MISSING  # task slots per meta-iteration (k per class, k | 50)
    max_episode_steps: int = 500  # Meta-World's protocol; lower only for tests
    use_one_hot: bool = False  # MT: append the one-hot task id to observations
    reward_function_version: str = "v2"
    fast_step: bool = True  # bit-exact fast env classes (envs/fast.py); false: Meta-World's stock ones


@dataclass
class ModelConfig:
    _target_: str = "metarl_lightning.policies.ActorCritic"
    hidden_dim: int = 256
    num_layers: int = 3
    shrink_last: bool = True  # seed architecture: 256 -> 256 -> 128
    layer_norm: bool = True
    activation: str = "tanh"
    init_log_std: float = 0.0
    # Every model=: tanh-squashed actions (default); false: Gaussian actions clipped to the box,
    # as metaworld-algorithms' MAML-TRPO and RL² (policies/distributions.py). MT-SAC needs true.
    squash: bool = True
    # The critic's width / depth (null: the actor's). The critic is not adapted; in MAML-PPO's
    # update a 2 x 256 critic instead of 3 x 400 bought only ~1.09x env-steps/s (ml1_cpu.yaml):
    # the second-order actor is the cost there.
    critic_hidden_dim: int | None = None
    critic_num_layers: int | None = None
    # Bounds of the actor's log-std (null: none for the PPO models' state-independent log-std,
    # kept there by projection after each optimiser step; SAC's clamp of its state-dependent
    # log-std, null: -20 / 2). An entropy bonus under Adam can drive an unbounded log-std up
    # (ml10_cpu.yaml).
    log_std_min: float | None = None
    log_std_max: float | None = None


@dataclass
class MultiHeadModelConfig(ModelConfig):
    """model=multihead_mlp: the MLP's keys; one output head per MT task (num_tasks from train.py)."""

    _target_: str = "metarl_lightning.policies.MultiHeadActorCritic"


@dataclass
class GRUModelConfig:
    _target_: str = "metarl_lightning.policies.GRUActorCritic"
    hidden_dim: int = 128
    init_log_std: float = 0.0
    squash: bool = True
    # Bounds of the log-std (null: none): the parameter's kept by projection as for the MLPs,
    # the head's output clamped
    log_std_min: float | None = None
    log_std_max: float | None = None
    std_type: str = "parameter"  # parameter | head (policies/recurrent.py)


# --- algorithm schemas: keys and types only. Each default lives in ONE place, the method's
# conf/algorithm/<name>.yaml (with why and where from); the methods' __init__ take every key
# without a default, and tests/test_config.py checks that every YAML sets every key.
@dataclass
class PPOKeys:
    """Keys every PPO-based method shares: optimizer, clipped surrogate, losses, GAE, guard."""

    optimizer: Any = MISSING
    scheduler: Any = MISSING
    episodes_per_task: int = MISSING
    clip: float = MISSING
    vf_coef: float = MISSING
    ent_coef: float = MISSING
    entropy_bonus: str = MISSING
    max_grad_norm: float = MISSING
    gamma: float = MISSING
    gae_lambda: float = MISSING
    reward_scale: float = MISSING
    max_nonfinite_steps: int = MISSING


@dataclass
class MAMLPPOConfig(PPOKeys):
    _target_: str = "metarl_lightning.algorithms.MAMLPPO"
    inner_lr: float = MISSING
    inner_steps: int = MISSING
    first_order: bool = MISSING
    learn_inner_lr: bool = MISSING
    outer_epochs: int = MISSING
    outer_minibatches: int = MISSING


@dataclass
class PPOConfig(PPOKeys):
    """Keys shared by the PPO methods without an inner loop (mt_ppo, rl2_ppo)."""

    update_epochs: int = MISSING
    num_minibatches: int = MISSING


@dataclass
class MTPPOConfig(PPOConfig):
    _target_: str = "metarl_lightning.algorithms.MTPPO"


@dataclass
class RL2PPOConfig(PPOConfig):
    _target_: str = "metarl_lightning.algorithms.RL2PPO"
    recurrent_info_in_obs: bool = MISSING
    bptt_episodes: int | None = MISSING
    task_reward_norm: float | None = MISSING


@dataclass
class MTSACConfig:
    """algorithm=mt_sac; defaults and their sources in conf/algorithm/mt_sac.yaml, value checks
    in algorithms/mt_sac.py (check_keys)."""

    _target_: str = "metarl_lightning.algorithms.MTSAC"
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    episodes_per_task: int = MISSING
    steps_per_iteration: int = MISSING
    actor_lr: float | None = MISSING
    critic_lr: float | None = MISSING
    alpha_lr: float | None = MISSING
    batch_size_per_task: int = MISSING
    utd: float = MISSING
    warmup_steps: int = MISSING
    buffer_capacity: int = MISSING
    checkpoint_buffer: bool = MISSING
    gamma: float = MISSING
    tau: float = MISSING
    initial_alpha: float = MISSING
    reward_scale: float = MISSING
    q_target_clip: float | None = MISSING
    task_weights: bool = MISSING
    max_nonfinite_steps: int = MISSING


@dataclass
class TrainerConfig:
    """Typed subset of lightning.Trainer's arguments; other Trainer kwargs can be added with +."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = 140  # meta-iterations
    max_time: Any = None  # wall-clock limit, "DD:HH:MM:SS" or {hours: 12}; ends like max_steps
    max_epochs: int = -1
    log_every_n_steps: int = 1
    num_sanity_val_steps: int = 0
    inference_mode: bool = False
    enable_checkpointing: bool = True
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    default_root_dir: str | None = None
    deterministic: bool = False
    use_distributed_sampler: bool = False  # rollouts are streamed, never sampled
    gradient_clip_val: float | None = None  # sets algorithm.max_grad_norm (manual optimisation)
    fast_dev_run: Any = False  # debug=fdr: one meta-iteration, no loggers or checkpoints
    profiler: Any = None  # debug=profiler: "simple" | "advanced" | "pytorch"


@dataclass
class DataConfig:
    num_workers: int | None = None  # env worker processes; None = one per available core
    collector: str = "workers"  # workers: whole phases in rollout workers | vector: reference
    vector_strategy: str = "process"  # collector=vector's env: process | sync | async
    env_restarts: int = 0  # rebuild the envs up to N times after a worker dies/raises; 0 = stop
    overlap: bool = False  # off-policy: the envs step while the updates run (needs a vector env
    # with step_async: vector_strategy process | async). Off by default: on the 2-core CPU VM the
    # serial loop's 2-thread update is as fast (296 vs 287 env-steps/s, MT10 CPU recipe,
    # benchmarks/offpolicy_overlap.py); its case is a GPU update, not yet measured


@dataclass
class EvalConfig:
    """Meta-World protocol settings (metaworld.evaluation defaults)."""

    num_evals: int | None = None  # ML: rounds of fresh goals; None: each protocol goal once
    # (ML10/ML45 test: 10 rounds, ML1: 2; see evaluation/protocol.py)
    adaptation_episodes: int = 10  # ML: episodes collected before the inner update
    evaluation_episodes: int = 3  # ML: episodes scored after adaptation
    mt_episodes: int = 50  # MT: episodes per task
    meta_batch_size: int | None = None  # eval sub-envs; None: the protocol's 20 (ML), 1 per task (MT)
    deterministic: bool = True  # evaluate the mean action


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    root_dir: str = MISSING


@dataclass
class TrainConfig:
    benchmark: BenchmarkConfig = MISSING
    model: Any = MISSING
    algorithm: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = None
    callbacks: Any = None
    experiment: Any = None
    debug: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "train"
    seed: int = 1
    ckpt_path: str | None = None
    max_env_steps: float | None = None  # stop once train/env_steps reaches it (any method); 2e7 ok
    tags: list[str] = field(default_factory=list)
    optimized_metric: str | None = "train/success_post"  # main() returns it to a sweeper
    select_on_test_split: bool = False  # a sweep may optimize val/* (held-out) only when true
    print_config: bool = True  # print the resolved config tree at start (and config_tree.log)


@dataclass
class BenchmarkOverrides:
    """What evaluate.py may change about the checkpoint's benchmark (None: keep the run's)."""

    max_episode_steps: int | None = None
    reward_function_version: str | None = None
    fast_step: bool | None = None


@dataclass
class EvaluateConfig:
    ckpt_path: str = MISSING
    task_name: str = "evaluate"
    split: str = "test"
    seed: int = 1
    benchmark: BenchmarkOverrides = field(default_factory=BenchmarkOverrides)
    eval: EvalConfig = field(default_factory=EvalConfig)
    num_workers: int | None = None
    vector_strategy: str = "process"


def added_keys(algorithm: Any) -> dict:
    """The keys added after runs were published (results/ holds their checkpoints) that the
    `algorithm` config of such a run lacks, at the value that reproduces what those runs did: not
    a default (new runs take theirs from conf/). One place for checkpoints.load_run (to rebuild
    the module) and loggers.config_group (so an old run groups with the same recipe run now)."""
    added = {}
    if "ent_coef" in algorithm and "entropy_bonus" not in algorithm:  # PPO methods
        added["entropy_bonus"] = "gaussian"
    if "outer_epochs" in algorithm and "outer_minibatches" not in algorithm:  # MAML-PPO
        added["outer_minibatches"] = 1  # full-batch epochs
    if "recurrent_info_in_obs" in algorithm and "bptt_episodes" not in algorithm:  # RL²-PPO
        added["bptt_episodes"] = None  # BPTT over whole trials
    if "recurrent_info_in_obs" in algorithm and "task_reward_norm" not in algorithm:  # RL²-PPO
        added["task_reward_norm"] = None  # one reward_scale for every task
    return added


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvaluateConfig)
    cs.store(group="benchmark", name="benchmark_schema", node=BenchmarkConfig)
    cs.store(group="model", name="actor_critic_schema", node=ModelConfig)
    cs.store(group="model", name="multihead_schema", node=MultiHeadModelConfig)
    cs.store(group="model", name="gru_schema", node=GRUModelConfig)
    cs.store(group="algorithm", name="maml_ppo_schema", node=MAMLPPOConfig)
    cs.store(group="algorithm", name="mt_ppo_schema", node=MTPPOConfig)
    cs.store(group="algorithm", name="rl2_ppo_schema", node=RL2PPOConfig)
    cs.store(group="algorithm", name="mt_sac_schema", node=MTSACConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)


def launched_ranks(outside: Any, inside: Any) -> Any:
    """`${launched_ranks:A,B}`: B where srun or torchrun started this process as one rank of
    several (Lightning's own SLURM / TorchElastic detection), else A. trainer=ddp_cpu uses it:
    spawned ranks locally, plain ddp when each SLURM task or torchrun process is a rank."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return inside if SLURMEnvironment.detect() or TorchElasticEnvironment.detect() else outside


register_configs()
OmegaConf.register_new_resolver("launched_ranks", launched_ranks, replace=True)


def validate(cfg: Any) -> None:
    """Checks Hydra cannot do by type alone. Raises ConfigError with a message naming the fix."""
    import os

    from hydra.utils import get_class

    from metarl_lightning import envs
    from metarl_lightning.build import benchmark_info
    from metarl_lightning.types import ConfigError

    b = cfg.benchmark
    info = benchmark_info(cfg)
    envs.check_meta_batch_size(info, b.meta_batch_size, "train")
    world = world_size(cfg.trainer)
    if world is not None:  # otherwise checked when the ranks exist (DataModule.setup)
        envs.check_world_size(info, b.meta_batch_size, world)
    check_method(cfg, info)
    get_class(cfg.algorithm._target_).check_config(cfg)  # the method's own demands
    max_env_steps = cfg.get("max_env_steps")
    if max_env_steps is not None and max_env_steps <= 0:
        raise ConfigError(f"max_env_steps must be > 0 or null, got {max_env_steps}")
    positive = {
        "benchmark.max_episode_steps": b.max_episode_steps,
        "trainer.max_steps": cfg.trainer.max_steps,
        "algorithm.optimizer.lr": cfg.algorithm.optimizer.lr,
    }
    if cfg.data.env_restarts < 0:
        raise ConfigError(f"data.env_restarts must be >= 0, got {cfg.data.env_restarts}")
    for key, value in positive.items():
        if value is None or value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}; set e.g. {key}=<positive value>")
    check_eval(cfg.eval)
    if cfg.ckpt_path is not None and not os.path.isfile(cfg.ckpt_path):
        raise ConfigError(f"ckpt_path {cfg.ckpt_path!r} does not exist; pass the path of a .ckpt "
                          "file, e.g. ckpt_path=outputs/train/<run>/checkpoints/last.ckpt")


def check_eval(e: Any) -> None:
    """The protocol's counts (`eval.*`, for train.py's callbacks and evaluate.py). 0 adaptation
    episodes is allowed: it scores the policy before any adaptation, the baseline that the
    protocol's 10 are compared with."""
    from metarl_lightning.types import ConfigError

    if e.num_evals is not None and e.num_evals < 1:
        raise ConfigError(f"eval.num_evals must be >= 1, got {e.num_evals}; set e.g. "
                          "eval.num_evals=1 or null (the protocol's coverage)")
    for key, low in (("adaptation_episodes", 0), ("evaluation_episodes", 1), ("mt_episodes", 1)):
        if e[key] < low:
            raise ConfigError(f"eval.{key} must be >= {low}, got {e[key]}; set e.g. "
                              f"eval.{key}={max(low, 1)}")


def world_size(trainer: Any) -> int | None:
    """Processes the trainer config asks for (devices x num_nodes); None if only known at run
    time (e.g. devices=auto on a GPU machine)."""
    devices, nodes = trainer.devices, trainer.num_nodes
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if isinstance(devices, str) and "," in devices:  # GPU ids, "0,1"
        return len([d for d in devices.split(",") if d.strip()]) * nodes
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    if devices == "auto" and trainer.accelerator == "cpu":
        return nodes
    return None


def check_multirun(cfg: Any) -> None:
    """Checks for the jobs of a sweep (`-m`, `sweep=optuna`), made before any of them trains."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from metarl_lightning.types import ConfigError

    metric = cfg.optimized_metric
    if metric is not None and metric.startswith("val/"):
        meta_eval = (cfg.get("callbacks") or {}).get("meta_eval")
        if meta_eval is not None and meta_eval.split == "test" and not cfg.select_on_test_split:
            raise ConfigError(
                f"optimized_metric={metric} would choose hyperparameters on the held-out test "
                "split; optimize a training metric (e.g. optimized_metric=train/success_post, "
                "the default), or ask for it explicitly with select_on_test_split=true")
        at_end = meta_eval is not None and (
            meta_eval.at_end or cfg.trainer.max_steps % meta_eval.every_n_steps == 0)
        if not at_end:
            raise ConfigError(
                f"optimized_metric={metric} is logged by callbacks.meta_eval after the last "
                "iteration; set callbacks.meta_eval.at_end=true or optimize a training metric, "
                "e.g. optimized_metric=train/success_post")
    strategy = cfg.trainer.strategy
    launched_outside = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if (isinstance(strategy, str) and strategy.startswith("ddp") and not launched_outside
            and not any(m in strategy for m in ("spawn", "fork", "notebook"))
            and world_size(cfg.trainer) != 1):
        raise ConfigError(
            f"trainer.strategy={strategy} in a multirun: Lightning would launch each extra rank "
            "by re-running this command, i.e. the whole sweep; use trainer=ddp_spawn (GPU) or "
            "trainer=ddp_cpu for a local sweep, plain ddp only under SLURM (hydra/launcher=slurm)"
            " or torchrun")
def check_method(cfg: Any, info: Any) -> None:
    """Algorithm, model and benchmark fit together: what each class declares (MetaRLModule's
    `benchmark_kinds`, `recurrent_policy`; a policy's `recurrent`, `multi_task`)."""
    from hydra.utils import get_class

    from metarl_lightning.types import ConfigError

    algo = get_class(cfg.algorithm._target_)
    model = get_class(cfg.model._target_)
    name = getattr(algo, "name", algo.__name__)
    recurrent = getattr(model, "recurrent", False)
    if getattr(algo, "recurrent_policy", False) and not recurrent:
        raise ConfigError(f"algorithm={name} adapts in a recurrent policy's hidden state; "
                          "add model=gru")
    if recurrent and not getattr(algo, "recurrent_policy", False):
        raise ConfigError(f"model=gru is a recurrent policy, for algorithm=rl2_ppo; with "
                          f"algorithm={name} use model=mlp, seed_mlp or multihead_mlp")
    kinds = getattr(algo, "benchmark_kinds", ("ml", "mt"))
    if info.kind not in kinds:
        other = "benchmark=mt10 (or mt1, mt50)" if "mt" in kinds else "benchmark=ml1 (or ml10)"
        fix = ("algorithm=maml_ppo or algorithm=rl2_ppo for ML" if info.kind == "ml"
               else "algorithm=maml_ppo or algorithm=mt_ppo for MT")
        raise ConfigError(f"algorithm={name} runs on {'/'.join(k.upper() for k in kinds)} "
                          f"benchmarks, not {info.name}; use {other}, or {fix}")
    if getattr(model, "multi_task", False) and info.kind != "mt":
        raise ConfigError(f"model=multihead_mlp has one head per MT task; {info.name} is a "
                          "meta-learning benchmark: use model=mlp (or seed_mlp)")
    needs = [f"algorithm={name}"] if getattr(algo, "needs_one_hot", False) else []
    needs += ["model=multihead_mlp"] if getattr(model, "multi_task", False) else []
    if needs and not info.use_one_hot:
        raise ConfigError(f"{' with '.join(needs)} conditions on the one-hot task id in the "
                          "observation: set benchmark.use_one_hot=true")
