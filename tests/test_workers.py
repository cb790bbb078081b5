"""Rollout workers: identical MetaBatches to the in-process reference path for every method,
slot balancing, clear faults, and nothing left behind by close()."""

from __future__ import annotations

import os
import signal
from multiprocessing import resource_tracker
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metarl_lightning.algorithms.sampling import draw_noise, sample_with_noise, slot_generators
from metarl_lightning.build import benchmark_info, build_module
from metarl_lightning.data import MetaWorldDataModule
from metarl_lightning.data.balance import assign_slots, makespan_share
from metarl_lightning.errors import EnvFault
from metarl_lightning.policies.distributions import sample_tanh_gaussian
from tests.conftest import TINY, compose_cfg

METHODS = {
    "maml_ppo": ["benchmark=ml1", "benchmark.env_name=reach-v3"],
    "rl2_ppo": ["benchmark=ml1", "benchmark.env_name=reach-v3", "algorithm=rl2_ppo", "model=gru",
                "model.hidden_dim=16"],
    "mt_ppo": ["benchmark=mt1", "benchmark.env_name=reach-v3", "benchmark.use_one_hot=true",
               "algorithm=mt_ppo"],
}


def _datamodule(cfg, collector: str, module, num_workers: int = 2) -> MetaWorldDataModule:
    dm = MetaWorldDataModule(
        benchmark=benchmark_info(cfg), meta_batch_size=5,
        episodes_per_task=cfg.algorithm.episodes_per_task, seed=3, num_workers=num_workers,
        vector_strategy="sync", collector=collector, overlap=True)
    dm.learner = module
    dm.setup("fit")
    return dm


def _assert_batches_equal(a, b):
    assert (a.query is None) == (b.query is None)
    for phase_a, phase_b in ((a.support, b.support), (a.query, b.query)):
        if phase_a is None:
            continue
        for field, x in phase_a._asdict().items():
            y = getattr(phase_b, field)
            assert (x is None) == (y is None), field
            if x is not None:
                assert torch.equal(x, y), f"{field}: max diff {(x - y).abs().max()}"
    timing = ("collect_time", "phase_time", "worker_wait_share", "worker_busy_seconds",
              "worker_env_seconds")
    assert set(a.stats) == set(b.stats)
    for key in set(a.stats) - set(timing):  # scalars and per-slot arrays alike
        assert np.array_equal(a.stats[key], b.stats[key]), key


@pytest.mark.parametrize("method", list(METHODS))
def test_workers_give_the_same_meta_batches_as_the_in_process_path(tmp_path, method):
    base = [o for o in TINY if not o.startswith("algorithm.")]  # TINY's are MAML's keys
    cfg = compose_cfg(base + METHODS[method] + ["benchmark.max_episode_steps=20",
                                                "benchmark.meta_batch_size=5"], tmp_path)
    torch.manual_seed(0)
    module = build_module(cfg, benchmark_info(cfg))
    ref, workers = _datamodule(cfg, "vector", module), _datamodule(cfg, "workers", module)
    try:
        assert workers.envs.groups == ref.collector.stepper.groups and len(workers.envs.groups) == 2
        for _ in range(2):
            a, b = ref.collector.collect(module), workers.collector.collect(module)
            _assert_batches_equal(a, b)
            assert a.support.rewards.abs().sum() > 0  # the envs did step
            assert b.support.advantages is None  # raw experience: GAE is training_step's
            assert 0.0 <= b.stats["worker_wait_share"] < 1.0 and len(workers.envs.last_busy) == 2
            assert 0.0 < b.stats["worker_env_seconds"] < b.stats["worker_busy_seconds"]
            assert a.stats["worker_busy_seconds"] == 0.0  # the in-process path has no workers
            with torch.no_grad():  # the next iteration samples with other parameters
                for p in module.parameters():
                    p.add_(0.01 * torch.randn_like(p))
        # noise generators advanced alike; env state saved alike
        for g, h in zip(ref.generators, workers.generators, strict=True):
            assert torch.equal(g.get_state(), h.get_state())
        assert len(workers.state_dict()["noise_generators"]) == 5
    finally:
        ref.teardown()
        workers.teardown()


def test_noise_comes_from_the_slot_generators():
    gens = slot_generators(1, [0, 1, 2])
    again = slot_generators(1, [2])
    phase = draw_noise(gens, 4, 7)  # (3, 7, 4): a phase of 7 steps at once
    assert phase.shape == (3, 7, 4)
    assert torch.equal(draw_noise(again, 4, 7)[0], phase[2])  # slot 2 alone = in a group
    noise = draw_noise(slot_generators(1, [0, 1, 2]), 4)  # (3, 1, 4)
    assert not torch.equal(noise[0], noise[1])
    mean, log_std = torch.randn(3, 1, 4), torch.randn(3, 1, 4) * 0.1
    scale, bias = torch.full((4,), 2.0), torch.zeros(4)
    actor = SimpleNamespace(action_scale=scale, action_bias=bias, squash=True)
    a, raw, logp = sample_with_noise(mean, log_std, actor, noise)
    torch.manual_seed(5)
    ref_noise = torch.randn_like(mean)
    torch.manual_seed(5)
    b, raw_b, logp_b = sample_tanh_gaussian(mean, log_std, scale, bias)
    a2, raw2, logp2 = sample_with_noise(mean, log_std, actor, ref_noise)
    assert torch.equal(raw_b, raw2) and torch.equal(logp_b, logp2) and torch.equal(b, a2)
    torch.testing.assert_close(raw, mean + log_std.exp() * noise)


@pytest.mark.parametrize("model", ["mlp", "seed_mlp"])
def test_per_slot_actions_by_batched_matmuls_equal_the_vmapped_functional_forward(model):
    """MAML's query phase acts with each slot's adapted actor through batched matmuls
    (sampling.batched_sequential), not vmap(functional_call): same means, so the same actions."""
    from torch.func import vmap

    from metarl_lightning.algorithms import functional as F
    from metarl_lightning.algorithms.sampling import batched_sequential

    cfg = compose_cfg(["benchmark=ml1", "benchmark.env_name=reach-v3", f"model={model}"])
    actor = build_module(cfg, benchmark_info(cfg)).policy.actor
    torch.manual_seed(0)
    params = {k: v.detach() + 0.1 * torch.randn(5, *v.shape) for k, v in actor.named_parameters()}
    obs = torch.randn(5, 1, actor.net[0].in_features)
    mean, log_std = vmap(lambda p, o: F.actor_forward(actor, p, o))(params, obs)
    torch.testing.assert_close(batched_sequential(actor.net, params, "net.", obs), mean,
                               rtol=1e-6, atol=1e-6)
    noise = torch.randn(5, 1, 4)
    sampled = actor_sampler(actor).act(params, obs, None, noise)
    torch.testing.assert_close(sampled[1], mean + log_std.exp() * noise, rtol=1e-6, atol=1e-6)
    assert batched_sequential(torch.nn.GRU(3, 3), params, "", obs) is None  # -> vmap route


@pytest.mark.parametrize("model", ["mlp", "seed_mlp", "mlp_relu_clipped"])
@pytest.mark.parametrize("per_slot", [False, True])
def test_numpy_step_policy_matches_the_torch_act(model, per_slot):
    """The collectors act through `Sampler.bind`: for a plain-MLP GaussianActor a numpy forward
    (sampling.numpy_actor), which must give torch's actions, raw actions and log-probs."""
    from metarl_lightning.algorithms.sampling import Sampler, numpy_actor

    extra = (["model=mlp", "model.activation=relu", "model.squash=false"]
             if model == "mlp_relu_clipped" else [f"model={model}"])
    cfg = compose_cfg(["benchmark=ml1", "benchmark.env_name=reach-v3", *extra])
    actor = build_module(cfg, benchmark_info(cfg)).policy.actor
    torch.manual_seed(0)
    params = ({k: v.detach() + 0.3 * torch.randn(5, *v.shape)
               for k, v in actor.named_parameters()} if per_slot else None)
    obs = np.random.default_rng(0).normal(size=(5, actor.net[0].in_features))  # float64, as envs
    noise = draw_noise(slot_generators(2, list(range(5))), 4).numpy()[:, 0]
    assert numpy_actor(actor, params) is not None
    got = actor_sampler(actor).bind(params)(obs, noise, None)
    ref = Sampler.bind(actor_sampler(actor), params)(obs, noise, None)  # the torch act
    for x, y in zip(got[:3], ref[:3], strict=True):
        assert x.dtype == np.float32 and x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    if model == "mlp_relu_clipped":
        assert (np.abs(got[0]) <= 1).all() and (np.abs(got[1]) > 1).any()  # clipped, not squashed


def actor_sampler(actor):
    from metarl_lightning.algorithms.sampling import ActorSampler

    return ActorSampler(actor)


def test_slots_are_balanced_by_cost_longest_first():
    costs = [3.0, 3.0, 1.0, 1.0, 1.0, 1.0]  # e.g. two push-v3 slots and four window-open-v3
    groups = assign_slots(costs, 2)
    assert groups == [[0, 2, 4], [1, 3, 5]]
    assert [sum(costs[s] for s in g) for g in groups] == [5.0, 5.0]
    assert makespan_share(costs, groups) == 0.0
    # by count (contiguous halves) one worker carries 7 of 10: the other waits 4/7 of the phase
    assert makespan_share(costs, [[0, 1, 2], [3, 4, 5]]) == pytest.approx(4 / 7)
    assert assign_slots([1.0] * 3, 8) == [[0], [1], [2]]  # never more workers than slots


def _tiny_workers(tiny_cfg, **kw):
    cfg = tiny_cfg("benchmark.max_episode_steps=20", "benchmark.meta_batch_size=5")
    module = build_module(cfg, benchmark_info(cfg))
    return module, _datamodule(cfg, "workers", module, **kw)


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm"))


def test_close_leaves_no_process_fd_or_shared_memory(tiny_cfg):
    # multiprocessing's resource tracker (one fd, process-wide, kept open) starts with the
    # first shared memory segment: started before counting, instead of a warm-up worker pool
    # (~8 s per spawned worker on 2 cores)
    resource_tracker.ensure_running()
    fds = len(os.listdir("/proc/self/fd"))
    module, dm = _tiny_workers(tiny_cfg)
    pids = dm.envs.worker_pids
    # the pool's segment (all its shared arrays live in one); only it is checked: other
    # processes, e.g. a test run beside this one, may create and remove segments meanwhile
    segment = dm.envs._shm.name.lstrip("/")
    assert segment in _shm()
    dm.collector.collect(module)
    dm.teardown()
    assert segment not in _shm()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)  # joined: no zombies either


@pytest.mark.parametrize("reaped", [False, True])
def test_a_dead_worker_is_an_env_fault_naming_its_tasks(tiny_cfg, reaped):
    """Killed while the command is on its way or (reaped) gone before it is sent (the send then
    fails with a broken pipe): either way the fault says the worker died."""
    module, dm = _tiny_workers(tiny_cfg)
    segment = dm.envs._shm.name.lstrip("/")
    os.kill(dm.envs.worker_pids[1], signal.SIGKILL)
    if reaped:
        dm.envs._procs[1].join(timeout=10)
    with pytest.raises(EnvFault, match=r"rollout worker 1 .*slots \[\d, \d\], task_name "
                                       r"\['reach-v3'\]\) failed in 'phase': worker process died"):
        dm.collector.collect(module)
    assert dm.envs.closed and segment not in _shm()  # the fault released everything
    dm.teardown()


def test_a_hung_worker_is_an_env_fault_after_the_timeout(tiny_cfg):
    module, dm = _tiny_workers(tiny_cfg)
    dm.envs.step_timeout = 2.0
    pids = dm.envs.worker_pids
    os.kill(pids[0], signal.SIGSTOP)
    try:
        with pytest.raises(EnvFault, match=r"rollout worker 0 .*no env step within "
                                           r"step_timeout=2.0s"):
            dm.collector.collect(module)
    finally:
        dm.teardown()
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)  # killed and reaped


@pytest.mark.parametrize("env_name", ["door-open-v3", "peg-insert-side-v3"])
def test_retask_resets_once_to_the_state_of_sample_tasks_then_reset(env_name):
    """The rollout workers re-task with one reset through the whole wrapper stack; the vector
    path (SyncVectorEnv's way) calls sample_tasks(), which resets below the outer wrappers, then
    reset(). Both must leave the env in the same state: same obs, rewards and successes after,
    across a task change (these classes move bodies in reset_model) and an episode end."""
    from metarl_lightning.data.workers import retask

    cfg = compose_cfg(["benchmark=ml1", f"benchmark.env_name={env_name}",
                       "benchmark.max_episode_steps=30"])
    info = benchmark_info(cfg)
    fns = info.env_fns(split="train", meta_batch_size=10, benchmark_seed=1, env_seed=1,
                       terminate_on_success=False, task_select="pseudorandom")
    stock, ours = fns[0](), fns[0]()  # one thunk, two envs: each must own its task list
    actions = np.random.default_rng(0).uniform(-1, 1, (45, 4)).astype(np.float32)
    for _ in range(3):  # trials
        stock.get_wrapper_attr("sample_tasks")()
        first = [stock.reset()[0], retask(ours)]
        np.testing.assert_array_equal(first[0], first[1])
        for a in actions:  # one full episode (same-step reset at its end), part of a second
            out = [stock.step(a), ours.step(a)]
            for x, y in zip(out[0][:4], out[1][:4], strict=True):
                np.testing.assert_array_equal(x, y)
            assert out[0][4]["success"] == out[1][4]["success"]
            if out[0][3]:
                np.testing.assert_array_equal(stock.reset()[0], ours.reset()[0])
        assert not ours.get_wrapper_attr("sample_tasks_on_reset")  # toggled back off
