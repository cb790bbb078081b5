"""Meta-World's official evaluation, run on envs built once and reused.

ML benchmarks: `metaworld.evaluation.metalearning_evaluation` on the held-out test split
(adaptation episodes, then evaluation episodes, `num_evals` rounds of fresh goals).
MT benchmarks: `metaworld.evaluation.evaluation`, 50 episodes per task, meta-parameters
(MT has no test split and the protocol does not adapt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import metaworld.evaluation as mw_eval

from metarl_lightning import envs as mw
from metarl_lightning.data.collector import single_threaded_torch
from metarl_lightning.envs import make_vector_env
from metarl_lightning.envs.vector import EVAL_INFO_KEYS
from metarl_lightning.evaluation.adapter import MetaLearnerAgent
from metarl_lightning.types import MetaLearner


@dataclass
class EvalResult:
    benchmark: str
    split: str
    success_rate: float
    mean_return: float
    per_task: dict[str, float]
    env_steps: int
    seconds: float

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "split": self.split,
                "success_rate": self.success_rate, "return": self.mean_return,
                "per_task": self.per_task, "eval_env_steps": self.env_steps,
                "seconds": self.seconds}


class Evaluator:
    """Builds the evaluation envs once; `run(learner)` may be called many times."""

    def __init__(self, benchmark: str, env_name: str | None, use_one_hot: bool, split: str,
                 seed: int, meta_batch_size: int | None = None, max_episode_steps: int = 500,
                 num_evals: int = 10, adaptation_episodes: int = 10, evaluation_episodes: int = 3,
                 mt_episodes: int = 50, deterministic: bool = True,
                 reward_function_version: str = "v2", num_workers: int | None = None,
                 vector_strategy: str = "process", recurrent_info_in_obs: bool = False,
                 info_keys: tuple[str, ...] | None = EVAL_INFO_KEYS):
        self.info = mw.describe(benchmark, env_name, use_one_hot, recurrent_info_in_obs)
        if self.info.kind == "mt":
            split = "train"  # MT has no test split: the protocol evaluates the training tasks
        self.split = split
        classes = self.info.classes(split)
        # Default: one sub-env per goal group of 10 goals per class (all 50 goals reachable).
        self.meta_batch_size = meta_batch_size or len(classes) * (5 if len(classes) == 1 else 1)
        mw.check_meta_batch_size(self.info, self.meta_batch_size, split)
        self.num_evals, self.adaptation_episodes = num_evals, adaptation_episodes
        self.evaluation_episodes, self.mt_episodes = evaluation_episodes, mt_episodes
        self.deterministic = deterministic
        fns = mw.make_env_fns(
            self.info, split=split, meta_batch_size=self.meta_batch_size, benchmark_seed=seed,
            env_seed=seed + 10_000,  # evaluation draws its own goal order and noise
            max_episode_steps=max_episode_steps, terminate_on_success=True,
            task_select="random" if self.info.kind == "mt" else "pseudorandom",
            reward_function_version=reward_function_version,
        )
        # only the info keys the protocol reads come back from the env workers (issue 12;
        # None: all of them, for benchmarks/throughput.py --eval)
        self.envs: gym.vector.VectorEnv = make_vector_env(fns, vector_strategy, num_workers,
                                                          info_keys=info_keys)

    def run(self, learner: MetaLearner) -> EvalResult:
        start = time.perf_counter()
        agent = MetaLearnerAgent(learner, self.envs.num_envs, self.deterministic)
        counter = _StepCounter(self.envs)
        with single_threaded_torch():  # per-step forwards while env workers hold the cores
            if self.info.kind == "ml":
                success, ret, per_task = mw_eval.metalearning_evaluation(
                    agent, counter, num_evals=self.num_evals,
                    adaptation_episodes=self.adaptation_episodes,
                    evaluation_episodes=self.evaluation_episodes)
            else:
                success, ret, per_task, _ = mw_eval.evaluation(agent, counter, self.mt_episodes)
        return EvalResult(self.info.name, self.split, float(success), float(ret),
                          {k: float(v) for k, v in sorted(per_task.items())}, counter.steps,
                          time.perf_counter() - start)

    def close(self) -> None:
        self.envs.close()


class _StepCounter(gym.vector.VectorWrapper):
    """Counts env steps (for the record) and forwards everything else to the vector env."""

    def __init__(self, env: gym.vector.VectorEnv):
        super().__init__(env)
        self.steps = 0

    def step(self, actions):
        self.steps += self.num_envs
        return self.env.step(actions)

    def call(self, name, *args, **kwargs):
        return self.env.call(name, *args, **kwargs)

    def get_attr(self, name):
        return self.env.get_attr(name)
