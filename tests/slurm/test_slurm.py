"""Scale-out on a real (one-node) SLURM cluster, as a user runs it: `python train.py -m
hydra/launcher=slurm ...` submits through submitit to the local slurmctld, each job starts its
DDP ranks with srun, and Lightning's SLURMEnvironment takes the ranks from the job. Marked
`slurm` (not in the default run): `python -m pytest -q -m slurm`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.test_sweeps import last_row, run_train

pytestmark = pytest.mark.slurm

# The launcher on this node: no GPUs, 1 GB and 1 core per task (each rank's env worker runs on
# it), the node's only partition. Everything else is conf/hydra/launcher/slurm.yaml as shipped.
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=null", "hydra.launcher.mem_gb=1",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=30"]
DDP = ["trainer=ddp_cpu", "hydra.launcher.tasks_per_node=2"]  # 2 srun tasks = 2 DDP ranks
TINY = [
    "benchmark.max_episode_steps=20", "benchmark.meta_batch_size=2", "model.hidden_dim=16",
    "trainer.max_steps=2", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "algorithm.outer_epochs=2", "data.num_workers=1",
    "callbacks.meta_eval.num_evals=1", "eval.adaptation_episodes=1",
    "eval.evaluation_episodes=1", "callbacks.last_checkpoint.every_n_train_steps=1",
]
STEPS_PER_ITERATION = 2 * 1 * 2 * 20  # ranks x task slots each x (support + query) x steps


def _task_logs(sweep: Path, job: str) -> dict[int, str]:
    """stderr + stdout of each SLURM task (= DDP rank) of submitit's job dir `job`, by task id
    (Lightning's rank and signal messages go through Python logging to the console)."""
    return {int(p.name.split("_")[-2]): p.read_text() + p.with_name(
                p.name.replace("_log.err", "_log.out")).read_text()
            for p in (sweep / ".submitit" / job).glob("*_log.err")}


def _job_dirs(sweep: Path) -> list[str]:
    return sorted(p.name for p in (sweep / ".submitit").iterdir()
                  if p.is_dir() and list(p.glob("*_log.err")))


def test_multirun_submits_one_ddp_job_per_seed(slurm_cluster, tmp_path):
    sweep = tmp_path / "multirun"
    proc = run_train(["-m", *LAUNCHER, *DDP, *TINY, f"hydra.sweep.dir={sweep}", "seed=1,2"],
                     tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "\nsrun " in script
    assert "#SBATCH --signal=TERM@300" in script  # time limit: SIGTERM, as scancel sends
    jobs = _job_dirs(sweep)
    assert len(jobs) == 2  # two SLURM jobs (an array of 2), one per seed
    for job in jobs:  # both ranks of each job were srun tasks, joined into one process group
        logs = _task_logs(sweep, job)
        assert sorted(logs) == [0, 1]
        assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0]
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    for num, seed in (("0", 1), ("1", 2)):
        run = sweep / num
        assert f"seed={seed}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 2
        slots = ckpt["MetaWorldDataModule"]["env_checkpoints"]
        assert [s[0] for s in slots] == ["slot0", "slot1"]  # one per rank, gathered on rank 0
        metrics = run / "csv" / "metrics.csv"
        assert last_row(metrics, "train/env_steps") == 2 * STEPS_PER_ITERATION  # all ranks
        assert 0.0 <= last_row(metrics, "val/success_rate") <= 1.0


def test_optuna_sweep_through_slurm(slurm_cluster, tmp_path):
    sweep = tmp_path / "optuna"
    tiny = [o for o in TINY if not o.startswith("model.hidden_dim")]  # hidden_dim is searched
    proc = run_train(["sweep=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                      *LAUNCHER, *tiny, f"hydra.sweep.dir={sweep}"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"algorithm.inner_lr", "algorithm.optimizer.lr",
                                          "model.hidden_dim", "algorithm.clip"}
    assert 0.0 <= result["best_value"] <= 1.0
    assert len(_job_dirs(sweep)) == 2  # both trials ran as SLURM jobs
    for trial in ("0", "1"):
        assert (sweep / trial / "checkpoints" / "last.ckpt").is_file()
        assert 0.0 <= last_row(sweep / trial / "csv" / "metrics.csv", "val/success_rate") <= 1.0


def _squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_scancel_writes_last_ckpt_and_a_resubmission_resumes(slurm_cluster, tmp_path):
    """The preemption path: scancel sends SIGTERM to every process of the job's steps (the
    ranks and their env workers), SIGKILL KillWait seconds later. Each rank finishes its
    meta-iteration, rank 0 writes last.ckpt with both ranks' env state; the run is resubmitted
    with ckpt_path=."""
    first, metrics = tmp_path / "first", tmp_path / "first" / "0" / "csv" / "metrics.csv"
    long = [o for o in TINY if not o.startswith(("trainer.max_steps", "callbacks.last_"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    # The cluster is shared by the session's SLURM tests: let the earlier tests' jobs leave the
    # queue (COMPLETING jobs are still listed), so the one job listed below is this test's.
    deadline = time.time() + 180
    while time.time() < deadline and _squeue():
        time.sleep(1)
    assert not _squeue(), f"jobs of earlier tests still queued: {_squeue()}"
    submitter = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", *LAUNCHER, *DDP, *long,
         "trainer.max_steps=100000", "callbacks.last_checkpoint.every_n_train_steps=100000",
         f"hydra.sweep.dir={first}"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and (not metrics.exists()
                                          or metrics.read_text().count("\n") < 4):
            assert submitter.poll() is None, "the multirun ended before the job was cancelled"
            time.sleep(1)  # a few meta-iterations (no periodic checkpoint: every 100000)
        jobs = _squeue()
        assert len(jobs) == 1, f"expected this test's one job in the queue, got {jobs}"
        subprocess.run(["scancel", jobs[0]], check=True)
        deadline = time.time() + 120  # KillWait=60 (scripts/slurm/start.sh) + slack
        while time.time() < deadline and _squeue():
            time.sleep(1)
        assert not _squeue(), "the cancelled job did not end"
    finally:
        # Without SLURM accounting (sacct) submitit cannot see the CANCELLED state and would
        # wait for the job's result; on a cluster with accounting the multirun fails here.
        submitter.send_signal(signal.SIGTERM)
        submitter.wait(timeout=60)
    logs = _task_logs(first, _job_dirs(first)[0])
    assert sorted(logs) == [0, 1]
    assert all("Received SIGTERM" in log for log in logs.values())  # Lightning saw it on both
    ckpt_path = first / "0" / "checkpoints" / "last.ckpt"
    assert f"resume with ckpt_path={ckpt_path}" in logs[0]
    state = torch.load(ckpt_path, weights_only=True)
    step = state["global_step"]
    assert step >= 3
    assert len(state["MetaWorldDataModule"]["env_checkpoints"]) == 2  # workers outlived SIGTERM

    second = tmp_path / "resumed"
    proc = run_train(["-m", *LAUNCHER, *DDP, *long, f"trainer.max_steps={step + 1}",
                      "callbacks.last_checkpoint.every_n_train_steps=1",
                      f"ckpt_path={ckpt_path}", f"hydra.sweep.dir={second}"],
                     tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = torch.load(second / "0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == step + 1
    resumed = second / "0" / "csv" / "metrics.csv"
    assert last_row(resumed, "train/env_steps") == (step + 1) * STEPS_PER_ITERATION
