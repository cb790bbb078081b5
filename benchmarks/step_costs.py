"""Per-class Meta-World v3 step cost (ms per env.step with random actions, one process, one
thread), the table behind metarl_lightning/data/balance.py. Only the ratios matter there, so the
classes are timed interleaved (round r steps every class's env 50 times) and each class's median
over the rounds is kept: load from other jobs then shifts every class alike.

    OMP_NUM_THREADS=1 python benchmarks/step_costs.py [--rounds 20] [--stock]

The classes are the fast twins training steps (envs/fast.py) unless --stock: the fast path
removes per-step Python that costs every class about the same, so the ratios differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from metaworld import MT50, _init_each_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50, help="steps per class per round")
    ap.add_argument("--stock", action="store_true", help="stock Meta-World classes")
    args = ap.parse_args()
    from metarl_lightning.envs.fast import fast_class

    bench = MT50(seed=1)
    envs = {}
    for name, cls in bench.train_classes.items():
        tasks = [t for t in bench.train_tasks if t.env_name == name]
        cls = cls if args.stock else fast_class(cls)
        envs[name] = _init_each_env(env_cls=cls, tasks=tasks, seed=1, max_episode_steps=500)
        envs[name].reset()
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.rounds):
        for name, env in envs.items():
            actions = rng.uniform(-1, 1, (args.steps, 4)).astype(np.float32)
            start = time.perf_counter()
            for a in actions:
                _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    env.reset()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    for name, t in times.items():
        print(f'    "{name}": {float(np.median(t)):.3f},', flush=True)


if __name__ == "__main__":
    main()
