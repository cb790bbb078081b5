"""Long-run hygiene: 1,000 meta-iterations on a tiny ML1 config through the real `train()` with the
process stepper, periodic checkpoints and meta-test evaluations (which build and close their own
env workers), sampling open file descriptors, process count and RSS (this process and all its
descendants) as it goes. Prints the series and their first (after warm-up) and last values.

    python benchmarks/hygiene.py [--iterations 1000] [--every 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

TINY_ML1 = [
    "benchmark=ml1", "benchmark.env_name=reach-v3", "benchmark.meta_batch_size=2",
    "benchmark.max_episode_steps=10", "model=mlp", "model.hidden_dim=16", "algorithm.outer_epochs=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.vector_strategy=process", "data.num_workers=2",
    "callbacks.meta_eval.every_n_steps=100", "callbacks.meta_eval.num_evals=1",
    "eval.adaptation_episodes=2", "eval.evaluation_episodes=1",
    "callbacks.last_checkpoint.every_n_train_steps=10", "logger=csv",
]


def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        out += kids
        stack += kids
    return out


def sample() -> tuple[int, int, float]:
    """(open fds, processes, RSS MB) of this process and its descendants."""
    me = os.getpid()
    procs = [me, *_descendants(me)]
    fds, rss_kb = 0, 0
    for p in procs:
        try:
            fds += len(os.listdir(f"/proc/{p}/fd"))
            with open(f"/proc/{p}/status") as f:
                rss_kb += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return fds, len(procs), rss_kb / 1024


class ResourceProbe(L.Callback):
    def __init__(self, every: int):
        self.every, self.rows = every, []
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == 1 or step % self.every == 0:
            fds, procs, rss = sample()
            self.rows.append((step, fds, procs, rss, time.perf_counter() - self.start))
            print(f"{step:>6} {fds:>5} {procs:>5} {rss:>9.1f} {self.rows[-1][-1]:>8.1f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100, help="iterations before the baseline")
    parser.add_argument("--out", default=None, help="run dir (default: a temporary directory)")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import metarl_lightning.config  # noqa: F401  (registers the schemas)
    from train import train

    out = args.out or tempfile.mkdtemp(prefix="hygiene-")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_ML1, f"trainer.max_steps={args.iterations}",
                                          "task_name=hygiene"])
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.root_dir = out, str(ROOT)
        cfg.callbacks.probe = {"_target_": f"{__name__}.ResourceProbe", "every": args.every}
    print(f"run dir: {out}")
    print(f"{'iter':>6} {'fds':>5} {'procs':>5} {'rss_MB':>9} {'wall_s':>8}", flush=True)
    _, objects = train(cfg)
    probe = next(c for c in objects["trainer"].callbacks if isinstance(c, ResourceProbe))
    del objects
    after = sample()

    base = next(r for r in probe.rows if r[0] >= args.warmup)
    last = probe.rows[-1]
    print(f"\nseries from iteration {base[0]} (after warm-up) to {last[0]}:")
    for i, name in ((1, "open fds"), (2, "processes"), (3, "RSS MB")):
        print(f"  {name:<10} first {base[i]:>9.1f}  last {last[i]:>9.1f}  "
              f"change {last[i] - base[i]:>+8.1f}  (min {min(r[i] for r in probe.rows[1:]):.1f}, "
              f"max {max(r[i] for r in probe.rows[1:]):.1f})")
    print(f"after train() returned: fds {after[0]}, processes {after[1]}, RSS {after[2]:.1f} MB")
    print(f"wall {last[4]:.0f} s for {last[0]} meta-iterations")


if __name__ == "__main__":
    main()
