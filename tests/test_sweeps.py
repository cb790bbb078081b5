"""Sweeps as a user runs them: `python train.py -m ...` and `sweep=optuna` in a subprocess, plus
the checks that stop a sweep before it trains."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarl_lightning import config as schema
from metarl_lightning.types import ConfigError
from tests.conftest import CONF, ROOT, TINY, compose_cfg
from train import objective

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# Shrinks any experiment without touching its benchmark or meta-batch (those must stay valid)
SMOKE = [
    "benchmark.max_episode_steps=5", "model.hidden_dim=16", "algorithm.episodes_per_task=1",
    "trainer.max_steps=1", "max_env_steps=null", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "data.collector=vector", "data.vector_strategy=sync",
    "callbacks.meta_eval.num_evals=1", "callbacks.meta_eval.mt_episodes=1",
    "eval.adaptation_episodes=1", "eval.evaluation_episodes=1",
    "callbacks.last_checkpoint.every_n_train_steps=1",
]


def run_train(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_row(metrics_csv: Path, key: str) -> float:
    with open(metrics_csv) as f:
        values = [r[key] for r in csv.DictReader(f) if r.get(key)]
    assert values, f"{key} not in {metrics_csv}"
    return float(values[-1])


@pytest.mark.slow  # 18 jobs, each building its benchmark and evaluation envs (ML45/MT50 ~40 s)
def test_multirun_over_every_experiment(tmp_path):
    sweep = tmp_path / "multirun"
    # It passed within 1,800 s on CI's idle machine (stop 18) and ran past it at load ~4 beside
    # two training jobs (stop 19): the limit only catches a hang, so it leaves that much margin.
    proc = run_train(["-m", "experiment=glob(*)", *SMOKE, f"hydra.sweep.dir={sweep}"], tmp_path,
                     timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((d for d in sweep.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    ran = []
    for job in jobs:  # each job: its own run dir, checkpoint and logger run
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        ran += [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
        assert (job / "checkpoints" / "last.ckpt").is_file(), job
        assert last_row(job / "csv" / "metrics.csv", "train/env_steps") > 0
        assert 0.0 <= last_row(job / "csv" / "metrics.csv", "val/success_rate") <= 1.0
    assert sorted(ran) == EXPERIMENTS


def test_optuna_sweep_writes_its_optimization_result(tmp_path, forked_python):
    sweep = tmp_path / "optuna"
    tiny = [o for o in TINY if not o.startswith("model.hidden_dim")]  # hidden_dim is searched
    # `python train.py sweep=optuna ...` forked from a preloaded interpreter (conftest); the
    # trials train in-process (TINY's sync envs)
    proc = forked_python.run("train.py", ["sweep=optuna", "hydra.sweeper.n_trials=2", *tiny,
                                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                             env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"algorithm.inner_lr", "algorithm.optimizer.lr",
                                          "model.hidden_dim", "algorithm.clip"}
    assert 0.0 <= result["best_value"] <= 1.0  # train/success_post, returned by main
    for trial in ("0", "1"):
        assert (sweep / trial / "checkpoints" / "last.ckpt").is_file()
        values = last_row(sweep / trial / "csv" / "metrics.csv", "val/success_rate")
        assert 0.0 <= values <= 1.0


def test_a_sweep_without_its_metric_stops_before_training(tmp_path, forked_python):
    # `python train.py -m ...` forked from a preloaded interpreter (conftest.ForkedPython)
    proc = forked_python.run("train.py", [
        "-m", "callbacks.meta_eval.at_end=false", "trainer.max_steps=3",
        "optimized_metric=val/success_rate", "select_on_test_split=true",
        f"hydra.sweep.dir={tmp_path / 'multirun'}"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 2
    assert "error: optimized_metric=val/success_rate is logged by callbacks.meta_eval" in proc.stderr
    assert not list(tmp_path.glob("multirun/*/checkpoints"))


def test_check_multirun():
    schema.check_multirun(compose_cfg(["trainer=ddp_cpu"]))  # spawned ranks: fine in a sweep
    schema.check_multirun(compose_cfg(["callbacks.meta_eval.at_end=false"]))  # train/* default
    with pytest.raises(ConfigError, match="held-out test split.*select_on_test_split=true"):
        schema.check_multirun(compose_cfg(["optimized_metric=val/success_rate"]))
    schema.check_multirun(compose_cfg(["optimized_metric=val/success_rate",
                                       "select_on_test_split=true"]))  # asked for explicitly
    with pytest.raises(ConfigError, match="use trainer=ddp_spawn .* or trainer=ddp_cpu"):
        schema.check_multirun(compose_cfg(["trainer=ddp_cpu", "trainer.strategy=ddp"]))
    with pytest.raises(ConfigError, match="set callbacks.meta_eval.at_end=true"):
        schema.check_multirun(compose_cfg(["callbacks.meta_eval.at_end=false", "select_on_test_split=true",
                                           "optimized_metric=val/success_rate"]))


def test_objective_is_the_logged_metric_or_a_clear_error():
    metrics = {"train/success_post": 0.5, "val/success_rate": 0.75}
    assert objective(metrics, "val/success_rate") == 0.75
    assert objective(metrics, None) is None
    with pytest.raises(ConfigError, match="val/return was not logged.*logged: train/success_post"):
        objective(metrics, "val/return")


def test_sweep_and_cluster_configs_compose(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["sweep=optuna", "hydra/launcher=slurm",
                                          "hydra.launcher.nodes=2",
                                          "hydra.launcher.tasks_per_node=4"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (2, 4)
    # inside the SLURM job, trainer=ddp takes its world from the job's environment
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    trainer = compose_cfg(["trainer=ddp"]).trainer
    assert (trainer.devices, trainer.num_nodes, schema.world_size(trainer)) == (2, 2, 4)
    cfg = compose_cfg(["trainer=ddp", "benchmark=ml10", "benchmark.meta_batch_size=10"])
    with pytest.raises(ConfigError, match="valid values for ML10 on 4 ranks: 20, 100, 500$"):
        schema.validate(cfg)


def test_ddp_cpu_takes_its_ranks_from_srun_or_torchrun(monkeypatch):
    local = compose_cfg(["trainer=ddp_cpu"]).trainer
    assert (local.strategy, local.devices, local.num_nodes) == ("ddp_spawn", 2, 1)
    # inside a SLURM job step (what submitit's srun sets): one rank per task, plain ddp
    for var, value in {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2",
                       "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(var, value)
    slurm = compose_cfg(["trainer=ddp_cpu"]).trainer
    assert (slurm.strategy, slurm.devices, slurm.num_nodes) == ("ddp", 2, 2)
    schema.check_multirun(compose_cfg(["trainer=ddp_cpu"]))  # fine in a SLURM sweep
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # salloc shell: Lightning spawns the ranks
    assert compose_cfg(["trainer=ddp_cpu"]).trainer.strategy == "ddp_spawn"
    for var in ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # what torchrun sets in its workers
    assert compose_cfg(["trainer=ddp_cpu"]).trainer.strategy == "ddp"
