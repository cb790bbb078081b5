"""End-to-end throughput on this machine, in one run: gymnasium's vector envs vs ours, training
env-steps/s (collection + adaptation + update) on MT10, the meta-update's share of an iteration,
and peak RSS of all processes (optionally for MT50).

    python benchmarks/throughput.py [--seconds 8] [--iterations 6] [--mt50]
"""

from __future__ import annotations

import argparse
import csv
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
from throughput_envs import effective_cpus, measure, mt10_env_fns  # noqa: E402

from metarl_lightning.envs.vector import ProcessVectorEnv  # noqa: E402


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
        rows = [r for r in csv.DictReader(f) if r.get("perf/env_steps_per_s")][1:]  # skip warm-up
    mean = lambda k: sum(float(r[k]) for r in rows) / len(rows)
    return {"sps": mean("perf/env_steps_per_s"), "update_share": mean("perf/update_share"),
            "iteration_s": mean("perf/iteration_time"), "peak_rss_mb": rss.peak, "wall_s": wall,
            "iterations": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--mt50", action="store_true", help="also measure MT50 peak RSS (slow)")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = ap.parse_args()
    print(f"{len(os.sched_getaffinity(0))} usable CPUs; effective parallel CPUs now: "
          f"{effective_cpus():.2f}", flush=True)
    res = {}
    for name, make in {
        "make_vec sync": lambda: gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=1),
        "make_vec async": lambda: gym.make_vec("Meta-World/MT10", vector_strategy="async", seed=1),
        "ProcessVectorEnv": lambda: ProcessVectorEnv(mt10_env_fns(1)),
    }.items():
        envs = make()
        try:
            res[name] = measure(envs, args.seconds, 1.0, 1)
        finally:
            envs.close()
        print(f"{name + ' (random actions)':<40s} {res[name]:>8,.0f} env-steps/s", flush=True)
    mt10 = train_run("mt10", args.iterations, args.overrides)
    print(f"{'training MT10 end to end':<40s} {mt10['sps']:>8,.0f} env-steps/s "
          f"({mt10['iterations']} iterations of {mt10['iteration_s']:.1f} s)")
    print(f"{'meta-update share of an iteration':<40s} {mt10['update_share']:>8.1%}")
    print(f"{'peak RSS, all processes, MT10':<40s} {mt10['peak_rss_mb']:>8,.0f} MB")
    if args.mt50:
        mt50 = train_run("mt50", 2, args.overrides)
        print(f"{'peak RSS, all processes, MT50':<40s} {mt50['peak_rss_mb']:>8,.0f} MB")
    print(f"{'ratio training / make_vec sync':<40s} {mt10['sps'] / res['make_vec sync']:>8.2f}x"
          "   (target >= 1.8x)")
    print(f"{'ratio ProcessVectorEnv / make_vec sync':<40s} "
          f"{res['ProcessVectorEnv'] / res['make_vec sync']:>8.2f}x")


if __name__ == "__main__":
    main()
