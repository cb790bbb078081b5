"""Single-core env-steps/s of Meta-World v3 envs: stock class vs its fast twin (envs/fast.py) vs
MuJoCo physics alone (`mj_step(model, data, nstep=frame_skip)` on the same env), in one run.

Per env and repeat, the three are timed back to back over the same random actions, so ratios are
taken under the same machine load (printed). Prints per-env medians with the [min, max] range
over --repeats, and the MT10 mean (1 / mean step time over the MT10 classes, as issue 13's table).

    python benchmarks/fast_step.py [--steps 400] [--repeats 3] [--envs reach-v3 push-v3 ...]
    python benchmarks/fast_step.py --profile push-v3 [--steps 3000]   # where the fast env's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3  # noqa: E402

from metarl_lightning.envs.fast import fast_class  # noqa: E402

MT10 = list(MT10_V3)
DEFAULT_ENVS = list(dict.fromkeys(["reach-v3", "push-v3", "pick-place-v3", "window-open-v3", *MT10]))


def make(name: str, fast: bool, seed: int = 0):
    """A ready env (goal drawn as metaworld._make_tasks draws it, then frozen)."""
    cls = ALL_V3_ENVIRONMENTS[name]
    env = (fast_class(cls) if fast else cls)()
    np.random.seed(seed)
    env._freeze_rand_vec, env._set_task_called = False, True
    env._set_task_inner()
    env.reset()
    env._freeze_rand_vec = True
    env.reset()
    return env


def time_env(env, actions: np.ndarray) -> float:
    """Seconds per env.step (a reset, untimed, whenever the episode truncates)."""
    total = 0.0
    for a in actions:
        if env.curr_path_length >= env.max_path_length:
            env.reset()
        t = time.perf_counter()
        env.step(a)
        total += time.perf_counter() - t
    return total / len(actions)


def time_physics(env, n: int) -> float:
    model, data, skip = env.model, env.data, env.frame_skip
    t = time.perf_counter()
    for _ in range(n):
        mujoco.mj_step(model, data, nstep=skip)
    return (time.perf_counter() - t) / n


def bench(names: list[str], steps: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    envs = {n: (make(n, False), make(n, True)) for n in names}
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4)).astype(np.float32)
    for stock, fast in envs.values():  # warm-up (first-call caches, branch predictors)
        time_env(stock, actions[:20]), time_env(fast, actions[:20])
    out = {n: {"stock": [], "fast": [], "physics": []} for n in names}
    for _ in range(repeats):
        for n, (stock, fast) in envs.items():
            out[n]["stock"].append(time_env(stock, actions))
            out[n]["fast"].append(time_env(fast, actions))
            out[n]["physics"].append(time_physics(fast, steps))
    return out


def report(res: dict[str, dict[str, list[float]]]) -> None:
    def sps(ts):  # steps/s median and range
        r = sorted(1 / t for t in ts)
        return statistics.median(r), r[0], r[-1]

    print(f"{'env':26s} {'stock steps/s':>22s} {'fast steps/s':>22s} {'fast/stock':>17s} "
          f"{'physics steps/s':>22s} {'fast/physics':>12s}")
    for n, r in res.items():
        s, f, p = sps(r["stock"]), sps(r["fast"]), sps(r["physics"])
        ratios = sorted(a / b for a, b in zip(r["stock"], r["fast"]))
        print(f"{n:26s} {s[0]:8.0f} [{s[1]:5.0f},{s[2]:5.0f}] {f[0]:8.0f} [{f[1]:5.0f},{f[2]:5.0f}] "
              f"{statistics.median(ratios):5.2f}x [{ratios[0]:.2f},{ratios[-1]:.2f}] "
              f"{p[0]:8.0f} [{p[1]:5.0f},{p[2]:5.0f}] {f[0] / p[0]:11.0%}")
    mt = [n for n in MT10 if n in res]
    if len(mt) == len(MT10):
        reps = len(res[mt[0]]["stock"])
        mean = {k: [sum(res[n][k][i] for n in mt) / len(mt) for i in range(reps)]
                for k in ("stock", "fast", "physics")}
        ratios = sorted(a / b for a, b in zip(mean["stock"], mean["fast"]))
        s, f, p = (statistics.median(sorted(1 / t for t in mean[k])) for k in ("stock", "fast", "physics"))
        print(f"{'MT10 mean':26s} {s:8.0f} {'':13s} {f:8.0f} {'':13s} {statistics.median(ratios):5.2f}x "
              f"[{ratios[0]:.2f},{ratios[-1]:.2f}] {p:8.0f} {'':13s} {f / p:11.0%}")


def profile(name: str, steps: int, top: int) -> None:
    env = make(name, True)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4)).astype(np.float32)
    prof = cProfile.Profile()
    prof.enable()
    time_env(env, actions)
    prof.disable()
    print(f"cProfile of fast {name}, {steps} steps (resets included), by own time:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", nargs="+", default=DEFAULT_ENVS)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", metavar="ENV", help="print the top of a cProfile of the fast ENV")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"{args.steps} steps x {args.repeats} repeats per env, one process")
    if args.profile:
        profile(args.profile, args.steps, args.top)
        return
    report(bench(args.envs, args.steps, args.repeats))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
