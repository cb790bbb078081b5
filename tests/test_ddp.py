"""Two CPU ranks (gloo, spawned by Lightning's ddp_spawn) on the tiny config: each rank collects
its own share of the meta-batch, the outer gradient is the mean of the ranks' gradients, so both
ranks end with the same parameters."""

from __future__ import annotations

import os
import pickle

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from metarl_lightning import config as schema
from metarl_lightning import envs
from metarl_lightning.types import ConfigError
from train import objective, train


class RankProbe(L.Callback):
    """Runs inside each rank (module level, so spawned ranks can unpickle it). Records the tasks
    the rank's envs held, its parameters, and at every backward the rank's local gradient
    against the gradient DDP left in `.grad`."""

    def __init__(self, path: str):
        self.path = path
        self.tasks: list = []
        self.grad_checks: list = []

    def setup(self, trainer, pl_module, stage):
        backward, checks = pl_module.manual_backward, self.grad_checks

        def checked_backward(loss, *args, **kwargs):
            params = list(pl_module.parameters())
            local = torch.cat([g.flatten() for g in torch.autograd.grad(
                loss, params, retain_graph=True)])  # this rank's gradient, before any sync
            backward(loss, *args, **kwargs)
            synced = torch.cat([p.grad.flatten() for p in params])
            every = [torch.empty_like(local) for _ in range(trainer.world_size)]
            torch.distributed.all_gather(every, local)
            checks.append({"synced_vs_mean": (synced - torch.stack(every).mean(0)).abs().max(),
                           "between_ranks": (every[0] - every[1]).abs().max()})

        pl_module.manual_backward = checked_backward

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        goals = trainer.datamodule.envs.get_attr("_last_rand_vec")
        self.tasks.append([_goal(g) for g in goals])

    def on_train_end(self, trainer, pl_module):
        torch.save({"initial": self.initial, "tasks": self.tasks, "grad_checks": self.grad_checks,
                    "env_steps": pl_module.env_steps,
                    "final": {k: v.detach().clone() for k, v in pl_module.named_parameters()}},
                   os.path.join(self.path, f"rank{trainer.global_rank}.pt"))


def _goal(rand_vec) -> tuple:
    return tuple(np.asarray(rand_vec, dtype=np.float64).round(6).tolist())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from tests.conftest import TINY, WORKERS, compose_cfg

    out = tmp_path_factory.mktemp("ddp")
    # 2 ranks x 1 task slot, each rank with its own rollout worker
    cfg = compose_cfg(TINY + ["trainer=ddp_cpu", WORKERS], out)
    with open_dict(cfg):
        cfg.callbacks.rank_probe = {"_target_": "tests.test_ddp.RankProbe", "path": str(out)}
    metrics, _ = train(cfg)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return out, metrics, ranks


def test_two_ranks_end_with_identical_parameters(ddp_run):
    _, _, (r0, r1) = ddp_run
    for name, p in r0["final"].items():
        assert torch.equal(p, r1["final"][name]), name
        assert not torch.equal(p, r0["initial"][name]), f"{name} did not train"


def test_outer_gradient_is_the_mean_of_the_ranks_gradients(ddp_run):
    _, _, ranks = ddp_run
    for rank in ranks:
        checks = rank["grad_checks"]
        assert len(checks) == 2 * 2  # 2 meta-iterations x 2 outer epochs (TINY)
        assert all(c["synced_vs_mean"] < 1e-6 for c in checks)
        assert all(c["between_ranks"] > 1e-4 for c in checks)  # the ranks' data differed


def test_ranks_collect_different_tasks_and_all_steps_are_counted(ddp_run):
    out, metrics, (r0, r1) = ddp_run
    # meta_batch_size=2 shared by 2 ranks: rank r steps global slot r, whose goals are its own
    # share of the class's 50 (disjoint from the other slot's)
    info = envs.describe("ML1", "reach-v3")
    slots = envs.make_env_fns(info, split="train", meta_batch_size=2, benchmark_seed=1,
                              env_seed=1)
    slot_goals = [{_goal(pickle.loads(t.data)["rand_vec"]) for t in fn.keywords["tasks"]}
                  for fn in slots]
    assert not slot_goals[0] & slot_goals[1]
    for rank, r in enumerate((r0, r1)):
        assert len(r["tasks"]) == 2 and all(len(t) == 1 for t in r["tasks"])  # 2 iterations
        assert {g for t in r["tasks"] for g in t} <= slot_goals[rank]
    # 2 ranks x 1 task x (1 support + 1 query) x 10 steps, per iteration, x 2 iterations
    assert r0["env_steps"] == r1["env_steps"] == 80
    assert metrics["train/env_steps"] == 80.0
    # the held-out evaluation ran on rank 0 and its result reached the launching process
    assert 0.0 <= objective(metrics, "val/success_rate") <= 1.0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    slots = ckpt["MetaWorldDataModule"]["env_checkpoints"]
    assert [s[0] for s in slots] == ["slot0", "slot1"]  # both ranks' envs, in slot order


def test_a_ddp_checkpoint_resumes_in_one_process(ddp_run, tiny_cfg):
    out, _, _ = ddp_run
    cfg = tiny_cfg("trainer.max_steps=3", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    _, objs = train(cfg)
    assert objs["trainer"].global_step == 3
    assert objs["module"].env_steps == 80 + 40  # counters carried over from the 2-rank run


def test_a_meta_batch_that_ranks_cannot_share_is_rejected(tiny_cfg):
    cfg = tiny_cfg("trainer=ddp_cpu", "trainer.devices=5")  # meta_batch_size=2 (TINY)
    with pytest.raises(ConfigError, match="cannot be shared by 5 ranks.*on 5 ranks: 5, 10, 25, 50$"):
        schema.validate(cfg)
