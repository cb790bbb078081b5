"""MTMHSAC training speed with and without overlapped collection (data.overlap), in one run.

Each repeat trains `experiment=mt10_mtmhsac_cpu` (or --experiment) for --env-steps with
data.overlap=false (step the envs, then update) and data.overlap=true (the envs step while the
updates run), interleaved so load drift hits both alike, meta-test callback off. Per run: the
mean over the iterations after the first (which holds the warm-up) of env-steps/s, gradient
steps/s, the update's share of the wall time and the share spent blocked on the envs; then the
overlap/serial ratio of env-steps/s per repeat and its range.

    python benchmarks/offpolicy_overlap.py [--repeats 3] [--env-steps 30000] [-- overrides...]

Run it alone: another job on the two cores turns the figures into a measure of contention.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("perf/env_steps_per_s", "perf/gradient_steps_per_s", "perf/update_share",
        "perf/env_wait_share")


def run(overlap: bool, args: argparse.Namespace, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "train.py", f"experiment={args.experiment}",
           f"max_env_steps={args.env_steps}", "callbacks=none", "logger=csv",
           f"data.overlap={str(overlap).lower()}", f"hydra.run.dir={out}", *args.overrides]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(KEYS[0])][1:]  # drop the warm-up's
    if not rows:
        raise SystemExit(f"no iteration after the first in {out}; raise --env-steps")
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--env-steps", type=int, default=30000)
    ap.add_argument("--experiment", default="mt10_mtmhsac_cpu")
    ap.add_argument("overrides", nargs="*", help="more train.py overrides (after --)")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"{'run':<14}{'env-steps/s':>12}{'grad steps/s':>14}{'update share':>14}"
          f"{'env wait':>10}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            rate = {}
            for overlap in (False, True):
                name = f"{'overlap' if overlap else 'serial'} #{rep + 1}"
                m = run(overlap, args, Path(tmp) / name.replace(" #", "_"))
                rate[overlap] = m[KEYS[0]]
                print(f"{name:<14}{m[KEYS[0]]:>12.0f}{m[KEYS[1]]:>14.1f}{m[KEYS[2]]:>14.2f}"
                      f"{m[KEYS[3]]:>10.2f}", flush=True)
            ratios.append(rate[True] / rate[False])
    print(f"overlap / serial env-steps/s: {' '.join(f'{r:.2f}' for r in ratios)} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); load average at end: "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
