"""Meta-World's official evaluation, run on envs built once and reused.

ML benchmarks: `metaworld.evaluation.metalearning_evaluation` on the held-out test split
(adaptation episodes, then evaluation episodes, `num_evals` rounds of fresh goals). Coverage
follows the protocol as Meta-World+ runs it (metaworld-algorithms' `MetaworldMetaLearningConfig`):
a vector env of 20 sub-envs (the meta-batch `metalearning_evaluation` assumes), the first 40
goals of each test class (`total_tasks_per_cls=40`), and classes x 40 / 20 rounds, so every
one of those goals is visited once: ML10/ML45 10 rounds (4 sub-envs per test class), ML1 2.
Note the protocol's own counting: `evaluation` scores the first `evaluation_episodes` episodes
that *end* per class, over all of that class's sub-envs, so with 4 sub-envs per class and
termination on success, successful episodes (which end early) fill those slots first.
MT benchmarks: `metaworld.evaluation.evaluation`, 50 episodes per task, meta-parameters
(MT has no test split and the protocol does not adapt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import metaworld.evaluation as mw_eval
import numpy as np

from metarl_lightning import envs as mw
from metarl_lightning.data.collector import single_threaded_torch
from metarl_lightning.envs import make_vector_env
from metarl_lightning.envs.benchmarks import scored_split
from metarl_lightning.envs.vector import EVAL_INFO_KEYS
from metarl_lightning.evaluation.adapter import MetaLearnerAgent
from metarl_lightning.types import MetaLearner

PROTOCOL_META_BATCH = 20  # metaworld.evaluation.metalearning_evaluation: "meta batch size of 20"
PROTOCOL_TEST_GOALS = 40  # its "40 goals per test task" (Meta-World+ total_goals_per_task_test)


@dataclass
class EvalResult:
    benchmark: str
    split: str
    success_rate: float
    mean_return: float
    per_task: dict[str, float]
    env_steps: int
    seconds: float
    # success per round of fresh goals (ML: num_evals rounds; MT: the protocol has one)
    per_round: list[float] = field(default_factory=list)
    per_task_rounds: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "split": self.split,
                "success_rate": self.success_rate, "return": self.mean_return,
                "per_task": self.per_task, "per_round": self.per_round,
                "per_task_rounds": self.per_task_rounds, "eval_env_steps": self.env_steps,
                "seconds": self.seconds}


class Evaluator:
    """Builds the evaluation envs once; `run(learner)` may be called many times."""

    def __init__(self, benchmark: mw.BenchmarkInfo, split: str, seed: int,
                 meta_batch_size: int | None = None, num_evals: int | None = None,
                 adaptation_episodes: int = 10, evaluation_episodes: int = 3,
                 mt_episodes: int = 50, deterministic: bool = True,
                 num_workers: int | None = None, vector_strategy: str = "process",
                 info_keys: tuple[str, ...] | None = EVAL_INFO_KEYS):
        self.info = benchmark  # the run's (build.benchmark_info), episode length included
        split = scored_split(self.info.kind, split)
        self.split = split
        self.meta_batch_size, self.goals_per_class, default_evals = protocol_coverage(
            self.info, split, meta_batch_size)
        mw.check_meta_batch_size(self.info, self.meta_batch_size, split, self.goals_per_class)
        self.num_evals = num_evals or default_evals
        self.adaptation_episodes = adaptation_episodes
        self.evaluation_episodes, self.mt_episodes = evaluation_episodes, mt_episodes
        self.deterministic = deterministic
        fns = self.info.env_fns(
            split=split, meta_batch_size=self.meta_batch_size, benchmark_seed=seed,
            env_seed=seed + 10_000,  # evaluation draws its own goal order and noise
            terminate_on_success=True,
            task_select="random" if self.info.kind == "mt" else "pseudorandom",
            goals_per_class=self.goals_per_class,
        )
        # only the info keys the protocol reads come back from the env workers (issue 12;
        # None: all of them, for benchmarks/throughput.py --eval)
        self.envs: gym.vector.VectorEnv = make_vector_env(fns, vector_strategy, num_workers,
                                                          info_keys=info_keys)

    def run(self, learner: MetaLearner) -> EvalResult:
        start = time.perf_counter()
        agent = MetaLearnerAgent(learner, self.envs.num_envs, self.deterministic)
        counter = _StepCounter(self.envs)
        rounds: list[tuple[float, float, dict]] = []
        with single_threaded_torch():  # per-step forwards while env workers hold the cores
            if self.info.kind == "ml":
                # One protocol call per round: the same sequence of calls as num_evals rounds in
                # one (each round samples tasks, init()s, adapts, evaluates), and the per-round
                # success that metalearning_evaluation averages away is kept.
                for _ in range(self.num_evals):
                    rounds.append(mw_eval.metalearning_evaluation(
                        agent, counter, num_evals=1,
                        adaptation_episodes=self.adaptation_episodes,
                        evaluation_episodes=self.evaluation_episodes))
            else:
                rounds.append(mw_eval.evaluation(agent, counter, self.mt_episodes)[:3])
        tasks = sorted(rounds[0][2])
        per_task_rounds = {t: [float(r[2][t]) for r in rounds] for t in tasks}
        return EvalResult(
            self.info.name, self.split,
            success_rate=float(np.mean([r[0] for r in rounds])),
            mean_return=float(np.mean([r[1] for r in rounds])),
            per_task={t: float(np.mean(v)) for t, v in per_task_rounds.items()},
            env_steps=counter.steps, seconds=time.perf_counter() - start,
            per_round=[float(r[0]) for r in rounds], per_task_rounds=per_task_rounds)

    def close(self) -> None:
        self.envs.close()


def protocol_coverage(info: mw.BenchmarkInfo, split: str,
                      meta_batch_size: int | None = None) -> tuple[int, int, int]:
    """(sub-envs, goals per class, rounds) of the protocol's evaluation of `split`.

    ML: 20 sub-envs where that splits the classes' goals evenly (else the most sub-envs up to
    20 that do, else one per class: ML1's train split has 50 goals, so 10 sub-envs and 5 rounds
    rather than 1 sub-env and 50 rounds), 40 goals per class on the test split (all 50 on the
    train split), and as many rounds as it takes to visit each goal once. MT: one sub-env per
    task (the protocol counts episodes, not rounds: `mt_episodes`)."""
    classes = len(info.classes(split))
    if info.kind == "mt":
        return meta_batch_size or classes, mw.N_GOALS, 1
    goals = PROTOCOL_TEST_GOALS if split == "test" else mw.N_GOALS
    if meta_batch_size is None:
        valid = mw.valid_meta_batch_sizes(classes, goals)
        fitting = [v for v in valid if v <= PROTOCOL_META_BATCH]
        meta_batch_size = max(fitting) if fitting else valid[0]
    rounds = max(1, classes * goals // meta_batch_size)
    return meta_batch_size, goals, rounds


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
