"""Meta-World v3 benchmark builders: official splits, all 50 goals per class, validated early.

No torch here. Env thunks are built the way `metaworld.make_ml_envs` builds them (one sub-env per
task slot, each cycling through its own share of a class's goals), so that any vector strategy
(gymnasium's Sync/Async or our ProcessVectorEnv) can run them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import metaworld
import metaworld.env_dict as env_dict
from metaworld import _init_each_env  # the per-env builder behind make_ml_envs/make_mt_envs

from metarl_lightning.envs.fast import fast_class
from metarl_lightning.errors import ConfigError

N_GOALS = 50  # Meta-World generates 50 goals per class (metaworld._N_GOALS)
OBS_DIM = 39  # every v3 env; MT one-hot ids are appended
ACTION_DIM = 4
BENCHMARKS = ("MT1", "MT10", "MT25", "MT50", "ML1", "ML10", "ML25", "ML45")
ENV_NAMES = tuple(env_dict.ALL_V3_ENVIRONMENTS.keys())


def benchmark_kind(name: str) -> Literal["ml", "mt"]:
    """ML*: meta-learning, scored on held-out test tasks; MT*: multi-task, on its training tasks."""
    return "ml" if name.startswith("ML") else "mt"


def scored_split(kind: str, split: str = "test") -> str:
    """The split an evaluation of `split` scores: MT has no test split, so its protocol
    evaluates the training tasks."""
    return "train" if kind == "mt" else split


@dataclass(frozen=True)
class BenchmarkInfo:
    """A run's benchmark, built once from its config (build.benchmark_info) and handed to
    everything that builds envs: the DataModule, the evaluator and the video callback (through
    `trainer.datamodule.info`), and build_module for the policy's sizes."""

    name: str
    kind: Literal["ml", "mt"]
    train_classes: tuple[str, ...]
    test_classes: tuple[str, ...]  # empty for MT
    use_one_hot: bool
    recurrent_info: bool  # RL²: previous action, reward and episode start in the obs
    env_name: str | None  # ML1/MT1's task
    max_episode_steps: int
    reward_function_version: str
    fast_step: bool  # envs/fast.py's bit-exact fast classes

    @property
    def obs_dim(self) -> int:
        return (OBS_DIM + (len(self.train_classes) if self.use_one_hot else 0)
                + (ACTION_DIM + 2 if self.recurrent_info else 0))

    def classes(self, split: str) -> tuple[str, ...]:
        return self.train_classes if split == "train" else self.test_classes

    def env_fns(self, *, split: Literal["train", "test"], meta_batch_size: int,
                benchmark_seed: int, env_seed: int, terminate_on_success: bool,
                task_select: Literal["random", "pseudorandom"] = "pseudorandom",
                goals_per_class: int = N_GOALS) -> list[functools.partial]:
        """`make_env_fns` with this benchmark's episode length, reward version and stepping."""
        return make_env_fns(
            self, split=split, meta_batch_size=meta_batch_size, benchmark_seed=benchmark_seed,
            env_seed=env_seed, max_episode_steps=self.max_episode_steps,
            terminate_on_success=terminate_on_success, task_select=task_select,
            reward_function_version=self.reward_function_version,
            goals_per_class=goals_per_class, fast_step=self.fast_step)


def describe(name: str, env_name: str | None = None, use_one_hot: bool = False,
             recurrent_info: bool = False, *, max_episode_steps: int = 500,
             reward_function_version: str = "v2", fast_step: bool = True) -> BenchmarkInfo:
    """Static facts of a benchmark, without building anything. Raises ConfigError on bad names."""
    if name not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)} "
            "(e.g. benchmark=ml10)"
        )
    kind = benchmark_kind(name)
    if name in ("ML1", "MT1"):
        if env_name not in ENV_NAMES:
            raise ConfigError(
                f"{name} needs benchmark.env_name set to a Meta-World v3 task, e.g. reach-v3; "
                f"got {env_name!r}. Valid: {', '.join(ENV_NAMES)}"
            )
        train = test = (env_name,)
        if kind == "mt":
            test = ()
    elif kind == "ml":
        d = getattr(env_dict, f"{name}_V3")
        train, test = tuple(d["train"].keys()), tuple(d["test"].keys())
    else:
        train, test = tuple(getattr(env_dict, f"{name}_V3").keys()), ()
    if reward_function_version not in ("v1", "v2"):
        raise ConfigError(f"reward_function_version must be v1 or v2, got {reward_function_version!r}")
    return BenchmarkInfo(name, kind, train, test, use_one_hot and kind == "mt", recurrent_info,
                         env_name if name in ("ML1", "MT1") else None, int(max_episode_steps),
                         reward_function_version, bool(fast_step))


def valid_meta_batch_sizes(num_classes: int, num_goals: int = N_GOALS) -> list[int]:
    """Meta-World splits each class's goals evenly over its sub-envs: k envs per class, k | goals."""
    return [num_classes * k for k in range(1, num_goals + 1) if num_goals % k == 0]


def check_meta_batch_size(info: BenchmarkInfo, meta_batch_size: int, split: str,
                          goals_per_class: int = N_GOALS) -> None:
    n = len(info.classes(split))
    valid = valid_meta_batch_sizes(n, goals_per_class)
    if meta_batch_size not in valid:
        raise ConfigError(
            f"meta_batch_size={meta_batch_size} cannot be split over {info.name} {split} "
            f"({n} classes x {goals_per_class} goals); valid values: {', '.join(map(str, valid))}"
        )


def check_world_size(info: BenchmarkInfo, meta_batch_size: int, world_size: int) -> None:
    """DDP: each of the `world_size` ranks steps meta_batch_size / world_size task slots."""
    if meta_batch_size % world_size:
        valid = [m for m in valid_meta_batch_sizes(len(info.train_classes)) if m % world_size == 0]
        raise ConfigError(
            f"meta_batch_size={meta_batch_size} cannot be shared by {world_size} ranks "
            f"(trainer.devices x trainer.num_nodes); valid values for {info.name} on "
            f"{world_size} ranks: {', '.join(map(str, valid)) or 'none'}"
        )


@functools.lru_cache(maxsize=4)
def benchmark(name: str, env_name: str | None, seed: int) -> metaworld.Benchmark:
    """The Meta-World Benchmark object; its task lists (goals) depend on the seed only."""
    if name in ("ML1", "MT1"):
        return getattr(metaworld, name)(env_name, seed=seed)
    return getattr(metaworld, name)(seed=seed)


def make_env_fns(
    info: BenchmarkInfo,
    *,
    split: Literal["train", "test"],
    meta_batch_size: int,
    benchmark_seed: int,
    env_seed: int,
    max_episode_steps: int = 500,
    terminate_on_success: bool = False,
    task_select: Literal["random", "pseudorandom"] = "pseudorandom",
    reward_function_version: str = "v2",
    goals_per_class: int = N_GOALS,
    fast_step: bool = True,
) -> list[functools.partial]:
    """One picklable thunk per task slot, in class order (slot i belongs to class i // k).

    Mirrors `metaworld._make_ml_envs_inner` (the same goal split) but for MT benchmarks too,
    and does not build the envs, so the caller picks the vector strategy. `goals_per_class`
    keeps each class's first goals only, as its `total_tasks_per_cls` does (the evaluation
    protocol uses 40 test goals per class). `fast_step` swaps each class for its bit-exact fast
    twin (`envs/fast.py`).
    """
    check_meta_batch_size(info, meta_batch_size, split, goals_per_class)
    if split == "test" and info.kind == "mt":
        raise ConfigError(f"{info.name} has no test split; MT evaluation uses the train tasks")
    if reward_function_version not in ("v1", "v2"):
        raise ConfigError(f"reward_function_version must be v1 or v2, got {reward_function_version!r}")
    bench = benchmark(info.name, info.train_classes[0] if info.name in ("ML1", "MT1") else None,
                      benchmark_seed)
    classes = bench.train_classes if split == "train" else bench.test_classes
    all_tasks = bench.train_tasks if split == "train" else bench.test_tasks
    per_class = meta_batch_size // len(classes)
    init = _init_recurrent_env if info.recurrent_info else _init_each_env
    fns = []
    for class_id, (env_name, env_cls) in enumerate(classes.items()):
        tasks = [t for t in all_tasks if t.env_name == env_name]
        assert len(tasks) == N_GOALS, (env_name, len(tasks))
        tasks = tasks[:goals_per_class]
        for i in range(per_class):
            fns.append(functools.partial(
                _own_tasks,
                init=init,
                env_cls=fast_class(env_cls) if fast_step else env_cls,
                tasks=tuple(tasks[i::per_class]),
                seed=env_seed,
                max_episode_steps=max_episode_steps,
                terminate_on_success=terminate_on_success,
                use_one_hot=info.use_one_hot,
                env_id=class_id,
                num_tasks=len(classes),
                task_select=task_select,
                reward_function_version=reward_function_version,
            ))
    return fns


def task_ids(info: BenchmarkInfo, meta_batch_size: int, split: str) -> list[int]:
    """Class index of each task slot, matching `make_env_fns` order."""
    n = len(info.classes(split))
    return [i // (meta_batch_size // n) for i in range(meta_batch_size)]


class EpisodeStartFlag(gym.Wrapper):
    """Sets the done slot (the last entry) of Meta-World's recurrent-info observation to 1 in
    every reset observation. `RNNBasedMetaRLWrapper` writes done=1 only into an episode's final
    observation, which the policy never reads under same-step autoreset (the vector env hands
    back the next episode's reset observation, done=0, in its place); with this flag the first
    observation of each episode carries the boundary, RL²'s d = 1 (Duan et al. 2016)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        obs = obs.copy()
        obs[-1] = 1.0
        return obs, info


def _own_tasks(*, init, tasks: tuple, **kwargs) -> gym.Env:
    """Build through `init` with a task list of the env's own: Meta-World's task-select wrapper
    shuffles its list in place, so envs built from one thunk in one process (an in-process env
    restart, a test) would otherwise share and reshuffle one list and see other task orders."""
    return init(tasks=list(tasks), **kwargs)


def _init_recurrent_env(**kwargs) -> gym.Env:
    """`_init_each_env` with `recurrent_info_in_obs`: obs + (a_{t-1}, r_{t-1} / 10, done)."""
    return EpisodeStartFlag(_init_each_env(recurrent_info_in_obs=True, **kwargs))
