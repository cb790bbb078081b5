"""What a run tells its user: train.log with the start and end summaries, env steps as the
loggers' step, a quiet console, per-task training success; a base install (no wandb, no
tensorboard) trains with logger=csv; debug presets, callbacks=none and the Lightning keys work."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from metarl_lightning import envs
from metarl_lightning.runlog import per_task_success
from tests.conftest import ROOT, TINY, compose_cfg
from train import train

# Imported by every Python process of the run (PYTHONPATH): the env workers too.
BLOCKER = textwrap.dedent("""
    import sys

    class _Blocked:
        BLOCKED = ("wandb", "tensorboard", "tensorboardX")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, _Blocked())
""")


def base_install_run_env(run_dir) -> dict:
    return {**os.environ, "PYTHONPATH": str(run_dir.parent / "site")}


@pytest.fixture(scope="module")
def base_install_run(tmp_path_factory):
    """`python train.py logger=csv` with wandb and tensorboard unimportable (a base install)."""
    tmp = tmp_path_factory.mktemp("base")
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(BLOCKER)
    run_dir = tmp / "run"
    env = base_install_run_env(run_dir)
    # env worker processes while training; the end-of-run evaluation in-process (a second
    # spawned worker re-imports train.py: ~7 s on 2 cores)
    proc = subprocess.run(
        [sys.executable, "train.py", *TINY, "logger=csv", "data.vector_strategy=process",
         "data.num_workers=1", "callbacks.meta_eval.vector_strategy=sync",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return proc, run_dir


def test_base_install_trains_with_the_csv_logger(base_install_run):
    proc, run_dir = base_install_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    # the blocker does block (the same environment as the run)
    for module in ("wandb", "tensorboard"):
        check = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                               capture_output=True, text=True, env=base_install_run_env(run_dir))
        assert check.returncode != 0 and "blocked by the test" in check.stderr


def test_train_log_has_the_start_and_end_summary(base_install_run):
    proc, run_dir = base_install_run
    text = (run_dir / "train.log").read_text()
    for expected in ("run: maml_ppo on ML1 reach-v3, seed 1", "output dir: " + str(run_dir),
                     "finished after 2 meta-iterations, 80 env steps",
                     "final val/success_rate", f"{run_dir}/checkpoints/last.ckpt (meta-iteration 2)"):
        assert expected in text, text
    assert (run_dir / "config_tree.log").read_text().startswith("CONFIG")


def test_console_is_quiet(base_install_run):
    proc, _ = base_install_run
    console = proc.stdout + proc.stderr
    for noise in ("litlogger", "Total FLOPs", "Total Flops", "precision lowered",
                  "Using ModelCheckpoint with manual optimization", "weights_only"):
        assert noise not in console, noise


def test_csv_rows_are_stepped_by_env_steps(base_install_run):
    _, run_dir = base_install_run
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r.get("train/env_steps")]
    val_rows = [r for r in rows if r.get("val/env_steps")]
    assert [int(r["step"]) for r in train_rows] == [40, 80]  # 2 tasks x 2 episodes x 10 steps
    assert [float(r["train/env_steps"]) for r in train_rows] == [40.0, 80.0]
    assert [int(r["step"]) for r in val_rows] == [80]


def test_per_task_success_averages_slots_per_class():
    info = envs.describe("MT10", None, True)
    # meta-batch 20 = 2 slots per class (slot i -> class i // 2)
    slots = np.zeros(20, np.float32)
    slots[[0, 1, 2]] = 1.0  # class 0: 2/2, class 1: 1/2, others 0
    dm = SimpleNamespace(info=info, meta_batch_size=20, rank=0, world_size=1)
    trainer = SimpleNamespace(datamodule=dm, world_size=1)
    out = per_task_success(trainer, {"success_post_per_slot": slots})
    names = info.train_classes
    assert len(out) == 10
    assert out[f"train/success_post/{names[0]}"] == 1.0
    assert out[f"train/success_post/{names[1]}"] == 0.5
    assert out[f"train/success_post/{names[2]}"] == 0.0
    # DDP rank 1 of 2 holds global slots 1, 3, ..., 19: one slot per class
    dm.rank, dm.world_size = 1, 2
    local = np.zeros(10, np.float32)
    local[0] = 1.0  # global slot 1: class 0
    trainer.world_size = 1  # no reduction in this unit test: the rank's own share
    out = per_task_success(trainer, {"success_post_per_slot": local})
    assert out[f"train/success_post/{names[0]}"] == 1.0 and out[f"train/success_post/{names[1]}"] == 0
    # ML1/MT1: nothing beyond train/success_post
    dm.info, dm.rank, dm.world_size = envs.describe("ML1", "reach-v3"), 0, 1
    assert per_task_success(trainer, {"success_post_per_slot": np.ones(2)}) == {}


def no_callbacks(*extra: str) -> list[str]:
    return [a for a in TINY if not a.startswith("callbacks.")] + ["callbacks=none", *extra]


def test_mt10_logs_per_task_training_success_every_iteration(tmp_path):
    cfg = compose_cfg(no_callbacks("benchmark=mt10", "benchmark.meta_batch_size=10",
                                   "benchmark.max_episode_steps=5"), tmp_path)
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/env_steps")]
    keys = [k for k in rows[0] if k.startswith("train/success_post/")]
    assert len(keys) == 10 and len(rows) == 2
    for r in rows:  # one slot per class: the per-task values average to train/success_post
        assert np.mean([float(r[k]) for k in keys]) == pytest.approx(float(r["train/success_post"]))


@pytest.mark.parametrize("extra,ckpt", [(["debug=fdr"], None), (["callbacks=none"], False),
                                        (["debug=profiler"], True),
                                        (["trainer.max_time=00:00:10:00",
                                          "trainer.gradient_clip_val=0.25"], True)])
def test_debug_presets_and_lightning_keys_train(tiny_cfg, tmp_path, extra, ckpt):
    cfg = compose_cfg(no_callbacks(), tmp_path) if extra == ["callbacks=none"] else tiny_cfg(*extra)
    metrics, objs = train(cfg)
    assert objs["stopped_by"] is None
    if ckpt is not None:  # fast_dev_run: Lightning's ModelCheckpoint may still save at the end
        assert (tmp_path / "checkpoints" / "last.ckpt").exists() == ckpt
    if "debug=fdr" in extra:
        assert objs["trainer"].global_step == 1 and not (tmp_path / "csv" / "metrics.csv").exists()
    if "debug=profiler" in extra:
        assert (tmp_path / "fit-profile.txt").exists()
    if "trainer.gradient_clip_val=0.25" in extra:
        assert objs["module"].hparams.max_grad_norm == 0.25
