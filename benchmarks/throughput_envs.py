"""Env-steps/s of Meta-World MT10 under random actions, for each way of vectorising it.

Compares gymnasium's SyncVectorEnv and AsyncVectorEnv (via ``gym.make_vec``, one process
per env for async) with ProcessVectorEnv (one worker per core, several envs per worker)
over the same 10 env thunks. Each variant is built, warmed up, then stepped for
``--seconds`` of wall clock.

    python benchmarks/throughput_envs.py [--seconds 10] [--warmup 1]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World/* ids)
import numpy as np
from metaworld import MT10, _init_each_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from metarl_lightning.envs.vector import ProcessVectorEnv  # noqa: E402


def mt10_env_fns(seed: int = 1) -> list:
    """The thunks metaworld.make_mt_envs("MT10", seed=seed) builds (use_one_hot=False)."""
    benchmark = MT10(seed=seed)
    return [
        functools.partial(_init_each_env, env_cls=env_cls,
                          tasks=[t for t in benchmark.train_tasks if t.env_name == name],
                          seed=seed, env_id=env_id, num_tasks=10, use_one_hot=False)
        for env_id, (name, env_cls) in enumerate(benchmark.train_classes.items())
    ]


def measure(envs: gym.vector.VectorEnv, seconds: float, warmup: float, seed: int) -> float:
    """Env-steps/s (vector steps x num_envs) over ``seconds`` after ``warmup`` seconds."""
    rng = np.random.default_rng(seed)
    space = envs.action_space
    actions = rng.uniform(space.low, space.high, size=(256, *space.shape)).astype(space.dtype)
    envs.reset(seed=seed)
    i, end = 0, time.perf_counter() + warmup
    while time.perf_counter() < end:
        envs.step(actions[i % len(actions)])
        i += 1
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        envs.step(actions[steps % len(actions)])
        steps += 1
    return steps * envs.num_envs / elapsed


def _spin(n: int) -> float:
    start, x = time.perf_counter(), 0
    for i in range(n):
        x += i
    return time.perf_counter() - start


def effective_cpus(n: int = 10**7) -> float:
    """How many CPUs' worth of work the machine gives right now: a fixed busy loop run
    once alone, then in one process per usable CPU at the same time (shared or
    oversubscribed VMs often give much less than their CPU count)."""
    cpus = len(os.sched_getaffinity(0))
    alone = min(_spin(n), _spin(n))
    with mp.get_context("spawn").Pool(cpus) as pool:
        together = pool.map(_spin, [n] * cpus, chunksize=1)
    return cpus * alone / max(together)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    variants = {
        "gym.make_vec sync": lambda: gym.make_vec("Meta-World/MT10", vector_strategy="sync",
                                                  seed=args.seed),
        "gym.make_vec async": lambda: gym.make_vec("Meta-World/MT10", vector_strategy="async",
                                                   seed=args.seed),
        "ProcessVectorEnv(num_workers=1)": lambda: ProcessVectorEnv(mt10_env_fns(args.seed),
                                                                    num_workers=1),
        "ProcessVectorEnv(num_workers=2)": lambda: ProcessVectorEnv(mt10_env_fns(args.seed),
                                                                    num_workers=2),
    }
    print(f"MT10 (10 envs), random actions, {args.seconds:g} s per variant after "
          f"{args.warmup:g} s warm-up; {len(os.sched_getaffinity(0))} usable CPUs, "
          f"effective parallel CPUs now: {effective_cpus():.2f}", flush=True)
    results = {}
    for name, make in variants.items():
        envs = make()
        try:
            results[name] = measure(envs, args.seconds, args.warmup, args.seed)
        finally:
            envs.close()
        print(f"{name:<34s} {results[name]:>9,.0f} env-steps/s", flush=True)
    ratio = results["ProcessVectorEnv(num_workers=2)"] / results["gym.make_vec sync"]
    print(f"{'ratio ProcessVectorEnv(2) / sync':<34s} {ratio:>9.2f}x")
    print(f"effective parallel CPUs at the end: {effective_cpus():.2f}")


if __name__ == "__main__":
    main()
