"""One training run end to end on real Meta-World envs with tiny settings."""

import csv
import math

import pytest
import torch

from train import train

LOGGED = ["train/policy_loss", "train/value_loss", "train/entropy", "train/approx_kl",
          "train/clip_fraction", "train/grad_norm", "train/inner_loss", "train/return_pre",
          "train/return_post", "train/success_pre", "train/success_post", "train/env_steps",
          "train/mean_action_saturation", "perf/env_steps_per_s"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_ml1_trains_end_to_end_and_logs_every_key(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    metrics, objs = train(cfg)
    module = objs["module"]
    rows = [r for r in _rows(tmp_path / "csv" / "metrics.csv") if r.get("train/env_steps")]
    assert len(rows) == 2
    for key in LOGGED:
        assert all(math.isfinite(float(r[key])) for r in rows), key
    # 2 tasks x 1 support + 1 query episode x 10 steps, per iteration
    assert [float(r["train/env_steps"]) for r in rows] == [40.0, 80.0]
    assert module.env_steps == 80
    assert 0.0 <= metrics["train/success_post"] <= 1.0


def test_parameters_change_and_envs_are_built_once(tiny_cfg, monkeypatch):
    import metarl_lightning.envs.benchmarks as B

    calls = []
    real = B.make_env_fns
    monkeypatch.setattr(B, "make_env_fns",
                        lambda *a, **k: calls.append(k["split"]) or real(*a, **k))
    import metarl_lightning.data.datamodule as dm
    monkeypatch.setattr(dm.mw, "make_env_fns", B.make_env_fns)
    cfg = tiny_cfg("trainer.max_steps=3")
    seen = {}
    import metarl_lightning.algorithms.maml_ppo as mp

    real_init = mp.MAMLPPO.on_train_start
    monkeypatch.setattr(mp.MAMLPPO, "on_train_start", lambda self: seen.update(
        {k: v.detach().clone() for k, v in self.named_parameters()}) or real_init(self))
    _, objs = train(cfg)
    after = dict(objs["module"].named_parameters())
    assert all(not torch.equal(seen[k], after[k]) for k in seen if "log_std" not in k)
    # training envs built once in setup() and re-tasked every iteration; the end-of-run
    # evaluation builds the test split once
    assert calls == ["train", "test"]
    assert objs["trainer"].global_step == 3  # max_steps counts meta-iterations


# second order on the process stepper (2 env worker processes); first order in-process (the
# stepper does not depend on the order; a second pair of workers costs ~5 s on 2 cores)
@pytest.mark.parametrize("first_order,strategy", [(False, "process"), (True, "sync")])
def test_mt10_trains_one_step(tiny_cfg, first_order, strategy):
    cfg = tiny_cfg("benchmark=mt10", "benchmark.meta_batch_size=10",
                   "benchmark.max_episode_steps=5", "trainer.max_steps=1",
                   f"data.vector_strategy={strategy}", "data.num_workers=2",
                   "eval.meta_batch_size=null",  # TINY's 1 sub-env cannot hold 10 MT tasks
                   f"algorithm.first_order={first_order}")
    metrics, objs = train(cfg)
    assert objs["module"].env_steps == 10 * 2 * 5
    assert math.isfinite(metrics["train/policy_loss"])
