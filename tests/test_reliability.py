"""Reliability: atomic checkpoints, env faults (restart or clean stop), mismatched checkpoints,
determinism across seeds, and nothing written outside the run dir."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from metarl_lightning.checkpoints import AtomicCheckpointIO
from metarl_lightning.errors import EnvFault
from metarl_lightning.types import ConfigError
from tests.conftest import ROOT, TINY, WORKERS
from train import train

# --- atomic checkpoint writes -----------------------------------------------------------------

# One process imports torch and Lightning once (~7 s on 2 cores) and forks a writer for each
# path read from stdin; the test SIGKILLs the writer (a process of its own, as before) mid-save.
_WRITER = """
import os, sys, torch
from metarl_lightning.checkpoints import AtomicCheckpointIO
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        io, path = AtomicCheckpointIO(), line.strip()
        io.save_checkpoint({"version": 0, "x": torch.zeros(1)}, path)
        print("ready", os.getpid(), flush=True)
        v = 0
        while True:  # ~80 MB per save: the kill lands mid-write most of the time
            v += 1
            io.save_checkpoint({"version": v, "x": torch.full((20_000_000,), float(v))}, path)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


@pytest.fixture(scope="module")
def checkpoint_writer():
    proc = subprocess.Popen([sys.executable, "-c", _WRITER], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    def start(path: Path) -> int:
        proc.stdin.write(f"{path}\n")
        proc.stdin.flush()
        word, pid = proc.stdout.readline().split()
        assert word == "ready"
        return int(pid)

    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        assert proc.stdout.readline().strip() == "reaped"

    yield start, kill
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_checkpoint_killed_mid_save_leaves_a_complete_file(tmp_path, delay, checkpoint_writer):
    path = tmp_path / "last.ckpt"
    start, kill = checkpoint_writer
    pid = start(path)
    time.sleep(delay)
    kill(pid)
    state = torch.load(path, weights_only=True)  # never a truncated file
    assert torch.all(state["x"] == float(state["version"]))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if Ctrl-C landed inside torch.save

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temp file left behind


# --- env faults -------------------------------------------------------------------------------

class KillEnvWorker(L.Callback):
    """Test helper: SIGKILL the first env worker as meta-iteration `step` + 1 begins (mid-rollout
    for the collector, which finds it dead at its next step)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(trainer.datamodule.envs.worker_pids[0], signal.SIGKILL)


FAULTY = ["data.collector=workers", "data.num_workers=1",
          "+callbacks.kill._target_=tests.test_reliability.KillEnvWorker", "+callbacks.kill.step=2"]


def test_dead_env_worker_is_restarted_when_configured(tiny_cfg):
    _, objects = train(tiny_cfg(*FAULTY, "trainer.max_steps=4", "data.env_restarts=1"))
    assert objects["trainer"].global_step == 4
    assert objects["datamodule"].restarts_done == 1


def test_dead_env_worker_stops_the_run_with_task_name_and_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*FAULTY, "trainer.max_steps=4", "callbacks.last_checkpoint.every_n_train_steps=100")
    with pytest.raises(EnvFault, match=r"task_name \['reach-v3'\].*worker process died"):
        train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2  # written at the fault
    _, objects = train(tiny_cfg("trainer.max_steps=3", f"ckpt_path={ckpt}", WORKERS,
                                "data.num_workers=1", out=tmp_path / "resumed"))
    assert objects["trainer"].global_step == 3


# --- mismatched checkpoints -------------------------------------------------------------------

def test_resuming_with_another_model_is_a_one_line_error(tiny_cfg, tmp_path, forked_python):
    train(tiny_cfg("trainer.max_steps=1"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"does not fit .* model.hidden_dim=16"):
        train(tiny_cfg("model.hidden_dim=32", f"ckpt_path={ckpt}", out=tmp_path / "other"))
    # `python train.py ...` forked from a preloaded interpreter (conftest.ForkedPython)
    proc = forked_python.run("train.py", [*TINY, "benchmark=mt1", "benchmark.env_name=reach-v3",
                                          f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'mt1'}"],
                             timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: checkpoint") and \
        "trained with benchmark=ML1" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_resuming_from_a_corrupt_checkpoint_is_a_one_line_error(tiny_cfg, tmp_path):
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable or corrupt"):
        train(tiny_cfg(f"ckpt_path={bad}"))


# --- determinism ------------------------------------------------------------------------------

def _train_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/success_post")]
    timing = ("perf/", "train/collect_time", "train/update_time")
    return [{k: v for k, v in r.items() if not k.startswith(timing)} for r in rows]


def test_same_seed_same_metrics_other_seed_differs(tiny_cfg, tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(tiny_cfg("trainer.max_steps=3", f"seed={seed}", out=tmp_path / name))
        runs[name] = _train_metrics(tmp_path / name / "csv" / "metrics.csv")
    assert len(runs["a"]) == 3
    assert runs["a"] == runs["b"]
    assert [r["train/return_pre"] for r in runs["a"]] != [r["train/return_pre"] for r in runs["c"]]


# --- nothing outside the run dir ----------------------------------------------------------------

def _tree(root: Path) -> set[str]:
    skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out.update(os.path.relpath(os.path.join(dirpath, f), root) for f in filenames)
    return out


def test_a_run_writes_only_under_its_run_dir(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _tree(ROOT)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "logger=many",
                           "task_name=disk"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree(ROOT) == before  # the source tree is untouched
    assert os.listdir(cwd) == ["outputs"]
    (run_dir,) = (cwd / "outputs" / "disk").iterdir()
    assert {p.name for p in run_dir.iterdir()} >= {".hydra", "csv", "checkpoints", "tensorboard",
                                                  "wandb", "train.log"}
