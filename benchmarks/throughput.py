"""End-to-end throughput on this machine, in one run, for MT10 and for ML10: `make_vec` sync, the
no-communication limit (N processes each stepping their share of the envs that benchmark trains
on, random actions, no IPC), training env-steps/s (collection + adaptation + update, marginal
rate after warm-up, meta-test callback off) with its ratios to both, the rollout phases' own
rate, the learner's share of an iteration and the bound it sets (phases at the limit), the
rollout workers' wait share, the meta-update's share, and peak RSS of all processes (MT50 with
--mt50).

    python benchmarks/throughput.py [--seconds 8] [--iterations 7] [--mt50] [--repeats 3]
                                    [--eval [--eval-rounds 10]]

--eval times the full ML10 protocol evaluation (10 rounds of 10 adaptation + 3 evaluation
episodes, untrained MAML policy) with every info key sent back by the env workers (as before
issue 12) and with only those the protocol reads.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from throughput_envs import effective_cpus, measure  # noqa: E402

from metarl_lightning import envs as mw  # noqa: E402
from metarl_lightning.data.balance import assign_slots, slot_costs  # noqa: E402


def _rss_tree_mb(pid: int) -> float:
    """RSS of a process and all its descendants, from /proc (MB)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
    return total / 1024


class PeakRSS(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0.0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, _rss_tree_mb(os.getpid()))
            time.sleep(0.2)


def train_run(benchmark: str, iterations: int, extra: list[str]) -> dict:
    """Train in-process through the real entry point; read the logged perf metrics."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import metarl_lightning.config  # noqa: F401
    from train import train

    out = tempfile.mkdtemp(prefix="throughput_")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"benchmark={benchmark}", f"trainer.max_steps={iterations}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "callbacks.meta_eval.at_end=false", "callbacks.meta_eval.every_n_steps=100000",
            *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = out
    rss = PeakRSS()
    rss.start()
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    rss.running = False
    with open(Path(out) / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/env_steps_per_s")][1:]  # warm-up
    mean = lambda k: sum(float(r[k]) for r in rows) / len(rows)
    steps = float(rows[-1]["train/env_steps"]) - float(rows[0]["train/env_steps"])
    seconds = sum(float(r["perf/iteration_time"]) for r in rows[1:])
    phase_seconds = sum(float(r["perf/phase_time"]) for r in rows[1:])
    return {"sps": steps / seconds,  # marginal: the env steps of iterations 2.. over their time
            "update_share": mean("perf/update_share"),
            "wait_share": mean("perf/worker_wait_share") if "perf/worker_wait_share" in rows[0]
            else float("nan"),
            "iteration_s": mean("perf/iteration_time"), "peak_rss_mb": rss.peak, "wall_s": wall,
            "iterations": len(rows) - 1,
            # the rollout phases alone (no learner in between): their env-steps/s, and the
            # learner's share of the iteration (adaptation, GAE, meta-update, logging)
            "phase_sps": steps / phase_seconds, "learner_share": 1 - phase_seconds / seconds,
            "steps": steps, "seconds": seconds,
            # the iterations' machine time (usable CPUs x wall): inside env.step in the rollout
            # workers, the rest of the workers' busy time (policy forward, noise, bookkeeping),
            # and the workers' idle time (the learner's adaptation, GAE, meta-update; waits)
            "env_cpu": sum(float(r["perf/worker_env_seconds"]) for r in rows[1:]) / capacity(seconds),
            "busy_cpu": sum(float(r["perf/worker_busy_seconds"]) for r in rows[1:]) / capacity(seconds)}


def capacity(seconds: float) -> float:
    return len(os.sched_getaffinity(0)) * seconds


def _no_ipc_worker(fns, seconds: float, start, out) -> None:
    """Step `fns`' envs in turn with random actions for `seconds`; report the step count."""
    envs = [fn() for fn in fns]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (256, 4)).astype(np.float32)
    for env in envs:
        env.get_wrapper_attr("sample_tasks")()  # pseudorandom task select: a task first
        env.reset()
    start.wait()
    steps, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for env in envs:
            _, _, term, trunc, _ = env.step(actions[steps % 256])
            if term or trunc:
                env.reset()
        steps += len(envs)
    out.put(steps)


def no_ipc_limit(fns: list, classes: list[str], num_workers: int, seconds: float) -> float:
    """N processes, each stepping its share (our cost-balanced one) of the envs with no
    communication at all: the machine's ceiling for these envs."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    groups = assign_slots(slot_costs(classes), num_workers)
    procs = [ctx.Process(target=_no_ipc_worker, args=([fns[s] for s in g], seconds, start, out))
             for g in groups]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


MAKE_VEC = {"mt10": "Meta-World/MT10", "ml10": "Meta-World/ML10-train"}  # meta-batch 20


def train_fns(name: str) -> tuple[list, list[str]]:
    """The training envs of MT10 (one per class) or ML10 (its meta-batch of 20, as trained)."""
    info = mw.describe(name, None, name.startswith("MT"))
    size = 10 if name == "MT10" else 20
    fns = info.env_fns(split="train", meta_batch_size=size, benchmark_seed=1, env_seed=1,
                       terminate_on_success=False)
    ids = mw.task_ids(info, size, "train")
    return fns, [info.train_classes[i] for i in ids]


def eval_run(rounds: int, info_keys, fast_step: bool = True) -> float:
    """Seconds for the ML10 protocol evaluation of an untrained MAML-PPO policy."""
    from hydra import compose, initialize_config_dir

    from metarl_lightning.build import build_module
    from metarl_lightning.evaluation.protocol import Evaluator

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["benchmark=ml10"])
    info = mw.describe("ML10", fast_step=fast_step)
    module = build_module(cfg, info)
    ev = Evaluator(info, "test", seed=1, num_evals=rounds, info_keys=info_keys)
    try:
        return ev.run(module).seconds
    finally:
        ev.close()


def once(args) -> dict:
    cpus = len(os.sched_getaffinity(0))
    res = {}
    for bench in ("mt10", "ml10"):
        # Meta-World's own sync vector env of the benchmark's training envs (stock classes)
        envs = gym.make_vec(MAKE_VEC[bench], vector_strategy="sync", seed=1)
        try:
            if bench.startswith("ml"):
                envs.call("sample_tasks")  # ML envs have no task until they draw one
            sync = measure(envs, args.seconds, 1.0, 1)
        finally:
            envs.close()
        print(f"{bench.upper() + ' make_vec sync (random actions)':<44s} {sync:>8,.0f} env-steps/s",
              flush=True)
        # the limit for the envs this benchmark trains on
        limit = no_ipc_limit(*train_fns(bench.upper()), cpus, args.seconds)
        print(f"{bench.upper() + ' no-IPC limit, ' + str(cpus) + ' processes (random actions)':<44s}"
              f" {limit:>8,.0f} env-steps/s", flush=True)
        r = res[bench] = train_run(bench, args.iterations, args.overrides)
        r["limit"], r["sync"] = limit, sync
        print(f"{'training ' + bench.upper() + ' end to end':<44s} {r['sps']:>8,.0f} env-steps/s "
              f"({r['iterations']} iterations of {r['iteration_s']:.1f} s)")
        print(f"{'  / no-IPC limit, / make_vec sync':<44s} {r['sps'] / limit:>8.2f}x"
              f" {r['sps'] / sync:>6.2f}x   (target >= 0.85x of the limit)")
        print(f"{'  rollout phases alone / no-IPC limit':<44s} "
              f"{r['phase_sps'] / limit:>8.2f}x   ({r['phase_sps']:,.0f} env-steps/s)")
        print(f"{'  learner share of an iteration':<44s} {r['learner_share']:>8.1%}"
              "   (no env steps: adaptation, GAE, meta-update, logging)")
        # if the phases stepped at the limit and the learner took as long as it did
        at_limit = r["steps"] / limit + r["learner_share"] * r["seconds"]
        r["bound"] = r["steps"] / at_limit / limit
        print(f"{'  bound: phases at the limit, same learner':<44s} {r['bound']:>8.2f}x")
        print(f"{'  rollout workers wait share':<44s} {r['wait_share']:>8.1%}")
        print(f"{'  meta-update share of an iteration':<44s} {r['update_share']:>8.1%}"
              "   (target <= 10%)")
        print(f"{'  machine time: in env.step':<44s} {r['env_cpu']:>8.1%}")
        print(f"{'    rollout workers, rest of their work':<44s} {r['busy_cpu'] - r['env_cpu']:>8.1%}"
              "   (policy forward, noise, bookkeeping)")
        print(f"{'    workers idle':<44s} {1 - r['busy_cpu']:>8.1%}"
              "   (learner: adaptation, GAE, update; waits)")
        print(f"{'  env.step share of the workers busy time':<44s} "
              f"{r['env_cpu'] / max(r['busy_cpu'], 1e-9):>8.1%}"
              "   (the ratio to the limit if the workers never idled)")
        print(f"{'  peak RSS, all processes':<44s} {r['peak_rss_mb']:>8,.0f} MB", flush=True)
    if args.eval:
        from metarl_lightning.envs.vector import EVAL_INFO_KEYS

        # before issues 12/13: stock envs, every info key; after: fast envs, the protocol's keys
        stock = eval_run(args.eval_rounds, None, fast_step=False)
        keys = eval_run(args.eval_rounds, EVAL_INFO_KEYS, fast_step=False)
        after = eval_run(args.eval_rounds, EVAL_INFO_KEYS, fast_step=True)
        res["eval_speedup"] = stock / after
        print(f"{'ML10 protocol eval, stock envs, all info keys':<44s} {stock:>8.1f} s "
              f"({args.eval_rounds} rounds)")
        print(f"{'  stock envs, protocol keys only':<44s} {keys:>8.1f} s   {stock / keys:.2f}x")
        print(f"{'  fast envs, protocol keys only':<44s} {after:>8.1f} s   "
              f"{stock / after:.2f}x faster (target >= 1.5x)", flush=True)
    if args.mt50:
        res["mt50"] = train_run("mt50", 3, args.overrides)  # 3: one warm-up, then a rate
        print(f"{'peak RSS, all processes, MT50':<44s} {res['mt50']['peak_rss_mb']:>8,.0f} MB"
              "   (target <= 3 GB)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--iterations", type=int, default=7,
                    help="first one is warm-up; at least 3 (the rate needs two after it)")
    ap.add_argument("--mt50", action="store_true", help="also measure MT50 peak RSS (slow)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--eval", action="store_true", help="time the ML10 protocol evaluation")
    ap.add_argument("--eval-rounds", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = ap.parse_args()
    if args.iterations < 3:
        ap.error("--iterations must be >= 3: the first is warm-up and the rate needs two more")
    print(f"{len(os.sched_getaffinity(0))} usable CPUs; effective parallel CPUs now: "
          f"{effective_cpus():.2f}", flush=True)
    runs = []
    for i in range(args.repeats):
        if args.repeats > 1:
            print(f"--- run {i + 1} of {args.repeats}", flush=True)
        runs.append(once(args))
    if args.repeats > 1:
        print(f"--- range over {args.repeats} runs (min - max)")
        for b in ("mt10", "ml10"):
            for what, f in (("/ no-IPC limit", lambda r, b=b: r[b]["sps"] / r[b]["limit"]),
                            ("/ make_vec sync", lambda r, b=b: r[b]["sps"] / r[b]["sync"]),
                            ("phases alone / limit",
                             lambda r, b=b: r[b]["phase_sps"] / r[b]["limit"]),
                            ("bound (phases at the limit)", lambda r, b=b: r[b]["bound"])):
                v = [f(r) for r in runs]
                print(f"{'training ' + b.upper() + ' ' + what:<44s} {min(v):.2f}x - {max(v):.2f}x")


if __name__ == "__main__":
    main()
