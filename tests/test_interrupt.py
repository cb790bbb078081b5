"""Ctrl-C or SIGTERM during training: the run finishes its meta-iteration, writes a loadable last.ckpt
and exits with 128 + the signal number; resuming from it works. Checkpoints load with plain
torch.load(weights_only=True)."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, TINY, WORKERS, compose_cfg
from train import train


# SIGTERM (schedulers, scancel) in the default run; SIGINT takes the same path (slow marker)
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_interrupt_writes_a_loadable_last_checkpoint(tmp_path, sig):
    args = [a for a in TINY if not a.startswith(("trainer.max_steps", "callbacks.last_checkpoint"))]
    # one rollout worker (each spawned worker costs ~8 s on 2 cores): what matters is that
    # workers leave SIGTERM to the main process, which finishes the iteration
    cmd = [sys.executable, "train.py", *args, WORKERS, "data.num_workers=1", "trainer.max_steps=100000",
           "callbacks.last_checkpoint.every_n_train_steps=1000", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    csv_path = tmp_path / "csv" / "metrics.csv"
    logged = lambda: csv_path.read_text().count("\n") - 1 if csv_path.exists() else 0  # noqa: E731
    deadline = time.time() + 300
    while time.time() < deadline and logged() < 3:
        time.sleep(0.5)  # wait for a few meta-iterations (no periodic checkpoint yet)
    seen = logged()  # on a loaded machine the deadline may pass first: compare with what ran
    assert seen >= 1, "no meta-iteration logged within 300 s"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]  # 130 / 143: stopped, not finished
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] >= seen  # every logged iteration (and the one running) is in it
    assert "resume with ckpt_path=" in out + err
    log = (tmp_path / "train.log").read_text()  # the hint and the summary reach the run's log
    assert f"resume with: python train.py {' '.join(args[:2])}" in log
    assert f"stopped by {'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'} after" in log
    # resumed in-process (train(), what `python train.py` calls; a second interpreter costs ~7 s)
    _, objs = train(compose_cfg([*args, f"trainer.max_steps={state['global_step'] + 1}",
                                 "callbacks.last_checkpoint.every_n_train_steps=1",
                                 f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    assert objs["stopped_by"] is None and objs["trainer"].global_step == state["global_step"] + 1
    after = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == state["global_step"] + 1


def test_progress_bar_counts_the_runs_iterations_after_a_resume(monkeypatch):
    """A run resumed at iteration 113 of 2000 shows 114/2000 after one more iteration (Lightning's
    own bar showed batch_idx + 1 = 1 of an unknown total there: no epoch start on resume)."""
    from types import SimpleNamespace

    from metarl_lightning.callbacks import IterationProgressBar

    bar = IterationProgressBar()
    trainer = SimpleNamespace(max_steps=2000, global_step=113, is_global_zero=True)
    monkeypatch.setattr(type(bar), "trainer", property(lambda self: trainer))
    monkeypatch.setattr(bar, "get_metrics", lambda *a: {"success": 0.1})
    bar.on_train_start(trainer, None)  # resume: Lightning skips on_train_epoch_start
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (113, 2000)
    trainer.global_step = 114
    bar.on_train_batch_end(trainer, None, None, None, batch_idx=0)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (114, 2000)
    assert bar.train_progress_bar.desc.startswith("Iteration")
    bar.on_train_end(trainer)


def test_a_resume_in_the_runs_own_dir_keeps_its_first_config(tmp_path, forked_python):
    """Hydra rewrites <run dir>/.hydra/ with the resuming command; the config the run started with
    is kept in .hydra/first/ (conf/train.yaml: hydra.callbacks.keep_first_config), once."""
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text("- seed=7\n- algorithm.lr=0.5\n")
    (hydra_dir / "config.yaml").write_text("seed: 7\n")
    run = lambda *args: forked_python.run("train.py", [*args, f"hydra.run.dir={tmp_path}"],  # noqa: E731
                                          timeout=120)
    # stops at validation (exit 2, nothing trained), after Hydra wrote .hydra/: enough here
    proc = run("trainer.max_steps=0")  # not a resume: Hydra's own behaviour, nothing kept
    assert proc.returncode == 2 and not (hydra_dir / "first").exists(), proc.stderr[-2000:]
    (hydra_dir / "overrides.yaml").write_text("- seed=7\n- algorithm.lr=0.5\n")  # the run's start
    (hydra_dir / "config.yaml").write_text("seed: 7\n")
    for ckpt in ("/no/first.ckpt", "/no/second.ckpt"):
        proc = run(f"ckpt_path={ckpt}")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"ckpt_path={ckpt}" in (hydra_dir / "overrides.yaml").read_text()  # Hydra's rewrite
        assert (hydra_dir / "first" / "overrides.yaml").read_text() == "- seed=7\n- algorithm.lr=0.5\n"
        assert (hydra_dir / "first" / "config.yaml").read_text() == "seed: 7\n"
