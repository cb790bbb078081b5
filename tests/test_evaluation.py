"""Official-protocol evaluation, checkpoints, exact resume, evaluate.py."""

import csv
import json
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from metarl_lightning import envs as mw
from metarl_lightning.checkpoints import load_run
from metarl_lightning.evaluation import Evaluator
from metarl_lightning.evaluation.protocol import protocol_coverage
from metarl_lightning.types import ConfigError
from tests.conftest import ROOT, WORKERS
from train import train


class StopAtStep(L.Callback):
    """Simulates an interruption after `step` meta-iterations (last.ckpt already written)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _train_rows(path):
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/env_steps")]
    keys = [k for k in rows[0] if k.startswith("train/") and k != "train/nonfinite_skips"]
    return [{k: r[k] for k in keys} for r in rows]


@pytest.mark.parametrize("bench,extra", [("ml1", []), ("mt1", ["benchmark.meta_batch_size=1"])])
def test_evaluator_follows_the_protocol_on_tiny_splits(tiny_cfg, bench, extra):
    cfg = tiny_cfg(f"benchmark={bench}", "trainer.max_steps=1", *extra)
    _, objs = train(cfg)
    info = mw.describe(bench.upper(), "reach-v3", cfg.benchmark.use_one_hot, max_episode_steps=10)
    evaluator = Evaluator(info, "test", seed=3,
                          meta_batch_size=5 if bench == "ml1" else None,
                          num_evals=2, adaptation_episodes=2,
                          evaluation_episodes=1, mt_episodes=2, vector_strategy="sync")
    try:
        result = evaluator.run(objs["module"])
    finally:
        evaluator.close()
    assert 0.0 <= result.success_rate <= 1.0
    assert list(result.per_task) == ["reach-v3"]
    assert result.split == ("test" if bench == "ml1" else "train")  # MT has no test split
    if bench == "ml1":  # 5 envs x 2 rounds x (2 adaptation + at most 1 evaluation episode)
        assert 5 * 2 * 2 * 10 < result.env_steps <= 5 * 2 * 3 * 10
    assert len(result.per_round) == (2 if bench == "ml1" else 1)  # MT: one protocol round
    assert np.mean(result.per_round) == pytest.approx(result.success_rate)
    assert result.per_task_rounds["reach-v3"] == pytest.approx(result.per_round)


def test_zero_adaptation_episodes_scores_the_unadapted_policy(tiny_cfg):
    """eval.adaptation_episodes=0: the protocol's evaluation episodes only (what the policy does
    before adapting, the baseline for the protocol's 10; README "Usage")."""
    cfg = tiny_cfg("benchmark=ml1", "trainer.max_steps=1")
    _, objs = train(cfg)
    info = mw.describe("ML1", "reach-v3", cfg.benchmark.use_one_hot, max_episode_steps=10)
    evaluator = Evaluator(info, "train", seed=3, meta_batch_size=5, num_evals=2,
                          adaptation_episodes=0, evaluation_episodes=1, vector_strategy="sync")
    try:
        result = evaluator.run(objs["module"])
    finally:
        evaluator.close()
    assert 0.0 <= result.success_rate <= 1.0 and len(result.per_round) == 2
    assert 0 < result.env_steps <= 5 * 2 * 1 * 10  # no adaptation episode was stepped


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_cfg, tmp_path):
    # the default collector (rollout workers): its per-slot noise generators and env state
    # travel in the checkpoint. One worker holding both slots (each spawned worker costs ~8 s
    # on 2 cores); slot balancing over 2 workers is tests/test_workers.py's.
    workers = [WORKERS, "data.num_workers=1"]
    full = tiny_cfg("trainer.max_steps=4", *workers)
    train(full)
    reference = _train_rows(tmp_path / "csv" / "metrics.csv")

    run_dir = tmp_path / "first"
    first = tiny_cfg("trainer.max_steps=4", *workers,
                     "+callbacks.stop._target_=tests.test_evaluation.StopAtStep",
                     "+callbacks.stop.step=2", out=run_dir)
    train(first)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2  # plain weights_only load
    # An iteration logged after the checkpoint (a crash before the next save): the resumed run
    # redoes it, so its row is dropped from the curves.
    metrics = run_dir / "csv" / "metrics.csv"
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    lost = {**[r for r in rows if r.get("train/env_steps")][-1], "train/env_steps": "1e9"}
    with open(metrics, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(lost)
    # resumed in the run's own dir, as the resume hint says: the curves continue there
    resumed = tiny_cfg("trainer.max_steps=4", *workers, f"ckpt_path={ckpt}", out=run_dir)
    train(resumed)
    after = _train_rows(metrics)
    assert len(reference) == 4 and len(after) == 4
    assert after == reference  # iterations 1-2 kept, 3-4 resumed, to the last printed digit


def test_evaluate_py_writes_eval_json_and_plot(tiny_cfg, tmp_path):
    train(tiny_cfg())
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"ckpt_path={ckpt}", "eval.num_evals=1", "eval.meta_batch_size=2",
         "eval.adaptation_episodes=1", "eval.evaluation_episodes=1", "vector_strategy=sync",
         f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    for key in ("benchmark", "split", "success_rate", "return", "per_task",
                "env_steps_trained", "ckpt_path"):
        assert key in report
    assert report["benchmark"] == "ML1" and report["split"] == "test"
    assert report["env_steps_trained"] == 2 * 2 * 2 * 10
    assert report["seed"] == 1 and report["max_episode_steps"] == 10
    assert report["protocol"]["max_episode_steps"] == 10 and report["protocol"]["num_evals"] == 1
    assert len(report["per_round"]) == 1 and report["per_task_rounds"]["reach-v3"] == report["per_round"]
    assert "evaluating" in (out / "evaluate.log").read_text()  # the run's log is not empty
    assert (out / "success.png").stat().st_size > 1000
    assert "reach-v3" in proc.stdout


def test_bad_checkpoints_are_one_line_errors(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run(str(tmp_path / "missing.ckpt"))
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        load_run(str(bad))
    train(tiny_cfg("trainer.max_steps=1"))
    with pytest.raises(ConfigError, match="does not match"):
        load_run(str(tmp_path / "checkpoints" / "last.ckpt"), {"name": "MT10", "env_name": None,
                                                               "use_one_hot": True})


@pytest.mark.parametrize("bench,split,expected", [
    ("ML10", "test", (20, 40, 10)),  # 4 sub-envs per test class, 10 rounds: 40 goals per class
    ("ML45", "test", (20, 40, 10)),
    ("ML1", "test", (20, 40, 2)),
    ("ML10", "train", (20, 50, 25)),
    ("ML45", "train", (45, 50, 50)),  # 20 does not split 45 classes: one sub-env per class
    ("ML1", "train", (10, 50, 5)),  # 20 does not split 50 goals: the most sub-envs below that do
    ("MT10", "train", (10, 50, 1)),
])
def test_protocol_coverage_defaults(bench, split, expected):
    info = mw.describe(bench, "reach-v3" if bench.endswith("1") else None)
    assert protocol_coverage(info, split) == expected


def test_ml10_protocol_visits_the_first_40_goals_of_every_test_class_once():
    """The default evaluation envs of ML10: each class's 4 sub-envs hold disjoint goal sets whose
    union is the class's first 40 test goals, 10 each: 10 rounds visit every one once."""
    info = mw.describe("ML10")
    sub_envs, goals, _ = protocol_coverage(info, "test")
    fns = mw.make_env_fns(info, split="test", meta_batch_size=sub_envs, benchmark_seed=1,
                          env_seed=1, goals_per_class=goals, fast_step=False)  # stock classes
    bench = mw.benchmarks.benchmark("ML10", None, 1)
    for name in info.test_classes:
        mine = [f.keywords["tasks"] for f in fns if f.keywords["env_cls"] is bench.test_classes[name]]
        assert len(mine) == 4 and all(len(t) == 10 for t in mine)
        held = [t.data for tasks in mine for t in tasks]
        first_40 = [t.data for t in bench.test_tasks if t.env_name == name][:40]
        assert sorted(held) == sorted(first_40)


def test_success_png_never_draws_empty_axes():
    """An untrained MT10 checkpoint (every task 0): bars still carry their values, and the
    spread over rounds is drawn where there is more than one round."""
    from metarl_lightning.evaluation.plots import eval_figure

    tasks = [f"task{i}-v3" for i in range(10)]
    report = {"benchmark": "MT10", "split": "train", "success_rate": 0.0, "seed": 1,
              "per_task": dict.fromkeys(tasks, 0.0), "per_round": [0.0],
              "per_task_rounds": {t: [0.0] for t in tasks}, "protocol": {"mt_episodes": 50},
              "env_steps_trained": 0, "max_episode_steps": 500}
    ax = eval_figure(report).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.00"] * 10
    assert len(ax.patches) == 10 and ax.get_ylim()[1] > 1.0
    ml1 = {**report, "benchmark": "ML1", "per_task": {"reach-v3": 0.6}, "success_rate": 0.6,
           "per_round": [0.4, 0.8], "per_task_rounds": {"reach-v3": [0.4, 0.8]},
           "protocol": {"num_evals": 2, "adaptation_episodes": 10, "evaluation_episodes": 3}}
    ax = eval_figure(ml1).axes[0]  # one task: success per round, not one full bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["round 1", "round 2"]
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.4, 0.8]
