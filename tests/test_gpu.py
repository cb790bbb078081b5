"""The GPU path: one GPU (trainer=gpu), DDP over the GPUs present with NCCL (trainer=ddp), and a
short ML10 run. Marked `gpu`; in the default run, skipped with the reason where CUDA is absent.
The env-steps/s and peak GPU memory of each run are printed (`pytest -m gpu -s`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY
from tests.test_sweeps import last_row
from train import objective, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device visible: run `pytest -m gpu` on a GPU machine"),
]
STEPS_PER_ITERATION = 2 * 2 * 10  # TINY: 2 task slots x (support + query) x 10 steps


def _report(name: str, metrics: dict[str, float]) -> None:
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"\n{name} on {torch.cuda.get_device_name(0)}: "
          f"{metrics['perf/env_steps_per_s']:.0f} env-steps/s (last iteration), "
          f"peak GPU memory {peak:.0f} MiB")


def test_one_gpu_run(tiny_cfg, tmp_path):
    torch.cuda.reset_peak_memory_stats()
    metrics, objs = train(tiny_cfg("trainer=gpu"))
    assert next(objs["module"].parameters()).device.type == "cuda"
    assert objs["trainer"].global_step == 2
    assert metrics["train/env_steps"] == 2 * STEPS_PER_ITERATION
    assert 0.0 <= objective(metrics, "val/success_rate") <= 1.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["state_dict"].values())  # loads anywhere
    _report("trainer=gpu", metrics)


def test_ddp_over_the_gpus_present_uses_nccl(tmp_path):
    """Plain ddp: Lightning re-launches this command for ranks 1.. (single run, no sweep).
    Two GPUs where there are two or more (the tiny meta-batch of 2 splits into 1 or 2 ranks)."""
    gpus = min(torch.cuda.device_count(), 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    for var in [v for v in env if v.startswith("SLURM_")]:
        env.pop(var)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "trainer=ddp", f"trainer.devices={gpus}",
         f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=nccl" in proc.stderr
    assert f"MEMBER: {gpus}/{gpus}" in proc.stderr
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    metrics = tmp_path / "csv" / "metrics.csv"
    assert last_row(metrics, "train/env_steps") == 2 * STEPS_PER_ITERATION  # every rank's steps
    print(f"\ntrainer=ddp on {gpus} GPU(s): "
          f"{last_row(metrics, 'perf/env_steps_per_s'):.0f} env-steps/s (last iteration)")


def test_short_ml10_run_on_gpu(tiny_cfg):
    torch.cuda.reset_peak_memory_stats()
    metrics, objs = train(tiny_cfg("trainer=gpu", "benchmark=ml10", "benchmark.meta_batch_size=10"))
    assert objs["trainer"].global_step == 2
    assert metrics["train/env_steps"] == 2 * 10 * 2 * 10  # iterations x tasks x episodes x steps
    assert 0.0 <= objective(metrics, "val/success_rate") <= 1.0
    _report("ML10, trainer=gpu", metrics)
