"""MT-SAC: the soft Bellman target, per-task temperatures, Polyak targets, the replay buffer and
off-policy stream, a short run through train.py, resume, evaluation, and the env-step budget."""

from __future__ import annotations

import contextlib

import gymnasium as gym
import lightning as L
import pytest
import torch

from metarl_lightning import config as schema
from metarl_lightning import envs as mw
from metarl_lightning.algorithms import MTSAC
from metarl_lightning.algorithms import sac_functional as F
from metarl_lightning.checkpoints import load_run, read_checkpoint
from metarl_lightning.data.offpolicy import OffPolicyStream, TaskReplayBuffer
from metarl_lightning.evaluation import Evaluator
from metarl_lightning.types import ConfigError
from tests.conftest import TINY, compose_cfg
from tests.test_evaluation import _train_rows
from train import train

SAC = [o for o in TINY if not o.startswith("algorithm.")] + [
    "algorithm=mt_sac", "benchmark=mt1", "algorithm.steps_per_iteration=3",
    "algorithm.warmup_steps=4", "algorithm.batch_size_per_task=8", "algorithm.buffer_capacity=1000"]


def test_soft_q_target_against_a_hand_computation():
    rewards = torch.tensor([1.0, 2.0, 0.5])
    next_q = torch.tensor([[3.0, 4.0, 10.0], [5.0, 1.0, 8.0]])  # (2 critics, N): min 3, 1, 8
    log_prob = torch.tensor([0.5, -1.0, 2.0])
    alpha = torch.tensor([0.2, 0.1, 0.2])  # per sample: its task's temperature
    # sample 0: truncated at the time limit (done, not terminated): bootstraps
    # sample 1: truly terminated: no bootstrap; sample 2: mid-episode
    terminated = torch.tensor([0.0, 1.0, 0.0])
    y = F.soft_q_target(rewards, next_q, log_prob, alpha, terminated, gamma=0.9)
    expected = torch.tensor([1 + 0.9 * (3 - 0.2 * 0.5), 2.0, 0.5 + 0.9 * (8 - 0.2 * 2.0)])
    torch.testing.assert_close(y, expected)  # 3.61, 2.0, 7.34
    clipped = F.soft_q_target(rewards, next_q, log_prob, alpha, terminated, 0.9, clip=3.0)
    torch.testing.assert_close(clipped, torch.tensor([3.0, 2.0, 3.0]))


def test_each_task_temperature_moves_toward_its_target_entropy():
    target_entropy = -4.0
    log_alpha = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([log_alpha], lr=0.05)
    task = torch.tensor([0, 0, 1, 1])  # task 2 has no samples
    # task 0: entropy -log pi = -5 < -4 (too deterministic) -> alpha up;
    # task 1: entropy 10 > -4 (too random) -> alpha down
    log_prob = torch.tensor([5.0, 5.0, -10.0, -10.0])
    for _ in range(20):
        opt.zero_grad()
        F.temperature_loss(log_alpha, task, log_prob, target_entropy).backward()
        opt.step()
    assert log_alpha[0] > 0.5 and log_alpha[1] < -0.5 and log_alpha[2] == 0


def test_task_weights_favour_low_temperatures_and_average_one():
    log_alpha = torch.tensor([0.0, -1.0])
    w = F.task_weights(log_alpha, torch.tensor([0, 1]))
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    assert w[1] > w[0]


def test_polyak_update_interpolates_in_place():
    target, source = [torch.zeros(3), torch.full((2,), 4.0)], [torch.ones(3), torch.zeros(2)]
    F.polyak_update(target, source, 0.1)
    F.polyak_update(target, source, 0.1)
    torch.testing.assert_close(target[0], torch.full((3,), 0.19))  # 1 - 0.9^2
    torch.testing.assert_close(target[1], torch.full((2,), 4.0 * 0.81))


def test_actor_and_temperature_losses_share_one_backward_without_mixing_gradients():
    """_sac_update steps the actor and temperature optimisers on the sum of their losses: each
    parameter set must get exactly its own loss's gradient."""
    from metarl_lightning.build import benchmark_info, build_module

    cfg = compose_cfg(SAC + ["benchmark.meta_batch_size=2"])
    module = build_module(cfg, benchmark_info(cfg))
    with torch.no_grad():
        module.log_alpha.copy_(torch.tensor([-0.5]))
    torch.manual_seed(0)
    obs = torch.randn(6, module.policy.obs_dim)
    obs[:, -1] = 1.0  # MT1's one-hot id
    task = torch.zeros(6, dtype=torch.long)
    alpha, weights = module.log_alpha.detach().exp()[task], torch.ones(6)
    actor = list(module.policy.actor.parameters())

    def grads(which):
        torch.manual_seed(1)  # the same reparameterised actions each time
        actor_loss, alpha_loss, _ = module.actor_losses(obs, task, alpha, weights)
        loss = {"sum": actor_loss + alpha_loss, "actor": actor_loss, "alpha": alpha_loss}[which]
        return torch.autograd.grad(loss, actor + [module.log_alpha], allow_unused=True)

    both, only_actor, only_alpha = grads("sum"), grads("actor"), grads("alpha")
    for g, ref in zip(both[:-1], only_actor[:-1], strict=True):
        torch.testing.assert_close(g, ref)
    torch.testing.assert_close(both[-1], only_alpha[-1])
    assert only_actor[-1] is None and all(g is None for g in only_alpha[:-1])
    assert both[-1].abs().sum() > 0 and sum(g.abs().sum() for g in both[:-1]) > 0


def test_actor_loss_reaches_the_actor_through_frozen_critics():
    """The actor's backward runs through the critics (dQ/da) without their weight gradients; the
    actor's gradient is the one an unfrozen critic gives, and the critics train again after."""
    from metarl_lightning.algorithms.mt_sac import frozen
    from metarl_lightning.build import benchmark_info, build_module

    cfg = compose_cfg(SAC + ["benchmark.meta_batch_size=2"])
    module = build_module(cfg, benchmark_info(cfg))
    torch.manual_seed(0)
    obs = torch.randn(6, module.policy.obs_dim)
    obs[:, -1] = 1.0  # MT1's one-hot id
    actor, critic = list(module.policy.actor.parameters()), list(module.policy.critic.parameters())

    def actor_grads(freeze: bool):
        torch.manual_seed(1)
        action, log_prob = module.policy.actor.rsample(obs)
        with frozen(module.policy.critic) if freeze else contextlib.nullcontext():
            q_pi = module.policy.critic(obs, action).min(0).values
        loss = (0.5 * log_prob - q_pi).mean()
        return torch.autograd.grad(loss, actor + critic, allow_unused=True)

    with_frozen, unfrozen = actor_grads(True), actor_grads(False)
    for g, ref in zip(with_frozen[:len(actor)], unfrozen[:len(actor)], strict=True):
        torch.testing.assert_close(g, ref)
    assert all(g is None for g in with_frozen[len(actor):])  # no critic weight gradients
    assert all(g is not None and g.abs().sum() > 0 for g in unfrozen[len(actor):])
    assert all(p.requires_grad for p in critic)  # put back after the block


def _fill(buf: TaskReplayBuffer, steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):  # slot s, step t: obs = 1000 * (s + 1) + t
        value = torch.arange(1, buf.num_slots + 1, dtype=torch.float32) * 1000 + t
        buf.add(obs=value[:, None].expand(-1, 2), actions=torch.zeros(buf.num_slots, 1),
                rewards=value, next_obs=value[:, None].expand(-1, 2),
                terminated=torch.zeros(buf.num_slots))


def test_replay_sampling_is_task_balanced_and_reads_only_written_rows():
    buf = TaskReplayBuffer(num_slots=3, capacity=50, obs_dim=2, act_dim=1)
    _fill(buf, 7)
    torch.manual_seed(0)
    batch = buf.sample(per_slot=40)
    assert batch["obs"].shape == (3, 40, 2) and batch["rewards"].shape == (3, 40)
    slot = (batch["rewards"] // 1000).long()  # every draw of row s comes from slot s
    assert torch.equal(slot, torch.arange(1, 4)[:, None].expand(3, 40))
    steps = batch["rewards"] % 1000
    assert steps.min() >= 0 and steps.max() <= 6  # never an unwritten (zero) row
    assert len(steps[0].unique()) > 3  # and not a constant row


def test_replay_ring_overwrites_the_oldest_and_round_trips_its_state():
    buf = TaskReplayBuffer(num_slots=2, capacity=5, obs_dim=2, act_dim=1)
    _fill(buf, 7)
    assert (buf.size, buf.pos) == (5, 2)
    assert sorted((buf.data["rewards"][0] % 1000).tolist()) == [2, 3, 4, 5, 6]
    copy = TaskReplayBuffer(num_slots=2, capacity=5, obs_dim=2, act_dim=1)
    copy.load_state_dict(buf.state_dict())
    _fill(buf, 1, start=7)
    _fill(copy, 1, start=7)
    for k in buf.data:
        assert torch.equal(buf.data[k], copy.data[k])


class _Learner:
    """What OffPolicyStream needs from the module, with uniform actions."""

    def __init__(self, warmup=3, utd=1.0):
        self.hparams = type("H", (), {"utd": utd})()
        self.learning_starts, self.vector_steps, self.update_debt = warmup, 0, 0.0
        self.replay = None

    def replay_buffer(self, num_slots, obs_dim):
        self.replay = self.replay or TaskReplayBuffer(num_slots, 100, obs_dim, 4)
        return self.replay

    def batch_per_slot(self, num_slots):
        return 2

    def explore(self, obs):
        return torch.rand(obs.shape[0], 4) * 2 - 1


def test_stream_stores_the_true_final_obs_at_truncation_and_never_terminates():
    H = 5
    info = mw.describe("MT10", None, use_one_hot=True)
    fns = mw.make_env_fns(info, split="train", meta_batch_size=10, benchmark_seed=1,
                          env_seed=1, max_episode_steps=H)[:2]
    envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    learner = _Learner(warmup=2 * H + 1)
    try:
        it = iter(OffPolicyStream(lambda: envs, learner, lambda: False, overlap=True))
        batch = next(it)  # after the warm-up: 2 episodes + 1 step stored
    finally:
        envs.close()
    buf = learner.replay
    assert buf.size == 2 * H + 2 and batch.obs.shape == (2, 2, info.obs_dim)
    assert batch.stats["env_steps"] == 2 * (2 * H + 2)
    d = buf.data
    assert d["terminated"][:, :buf.size].sum() == 0  # the time limit is not termination
    mid = slice(0, H - 1)  # inside an episode, next_obs is the next step's obs
    torch.testing.assert_close(d["next_obs"][:, mid], d["obs"][:, 1:H])
    # at the truncation, next_obs is the final obs, not the next episode's reset obs
    final, reset = d["next_obs"][:, H - 1], d["obs"][:, H]
    assert (final[:, :39] - reset[:, :39]).abs().sum(-1).min() > 1e-3
    # task ids: slot k is class k (one-hot at the end of the obs), kept in its own ring
    assert torch.equal(d["obs"][:, :buf.size, -10:].argmax(-1),
                       torch.arange(2)[:, None].expand(2, buf.size))


@pytest.mark.slow  # data.overlap is opt-in; a worker process and MT10 envs: ~10 s
def test_overlapped_stream_stores_what_the_serial_one_stores():
    """With a ProcessVectorEnv the envs step while the updates run: the same actions and
    transitions as the serial loop (a SyncVectorEnv), the same number of updates, each batch
    drawn before its step's transitions land (the buffer one step behind when it is drawn)."""
    from metarl_lightning.envs.vector import ProcessVectorEnv

    H = 5
    info = mw.describe("MT10", None, use_one_hot=True)
    fns = mw.make_env_fns(info, split="train", meta_batch_size=10, benchmark_seed=1,
                          env_seed=1, max_episode_steps=H)[:2]
    runs = {}
    for kind in ("serial", "overlap"):
        envs = (gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
                if kind == "serial" else ProcessVectorEnv(fns, num_workers=1, step_timeout=60))
        learner = _Learner(warmup=3)
        torch.manual_seed(0)
        try:
            it = iter(OffPolicyStream(lambda envs=envs: envs, learner, lambda: False,
                                      overlap=True))
            sizes = []
            for _ in range(2 * H + 3):  # through two truncations
                batch = next(it)
                sizes.append((learner.vector_steps, learner.replay.size))
                assert batch.stats["env_steps"] == (8 if not sizes[1:] else 2)
        finally:
            envs.close()
        runs[kind] = sizes, learner.replay
    (serial_sizes, serial), (overlap_sizes, overlap) = runs["serial"], runs["overlap"]
    assert [v for v, _ in overlap_sizes] == [v for v, _ in serial_sizes]  # same updates
    assert all(n == v for v, n in serial_sizes) and all(n == v - 1 for v, n in overlap_sizes)
    n = overlap.size  # every stored transition identical, truncations' final obs included
    for k in serial.data:
        torch.testing.assert_close(overlap.data[k][:, :n], serial.data[k][:, :n])


def _cfg(tmp_path, *extra):
    return compose_cfg(SAC + list(extra), tmp_path)


@pytest.mark.parametrize("model", ["mlp", "multihead_mlp"])
def test_mt_sac_trains_one_iteration_and_evaluates_under_the_mt_protocol(model, tmp_path):
    cfg = _cfg(tmp_path, f"model={model}", "trainer.max_steps=1")
    metrics, objs = train(cfg)
    module = objs["module"]
    # 4 warm-up vector steps, then 3 (env step + gradient step); 2 task slots of MT1
    assert module.vector_steps == 7 and module.env_steps == 2 * 7
    assert objs["trainer"].global_step == 1
    for key in ("train/critic_loss", "train/actor_loss", "train/alpha_loss", "train/q_mean",
                "train/entropy", "train/env_steps", "perf/gradient_steps_per_s"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert module.log_alpha.detach().ne(0).all()  # the temperature was stepped
    critic, target = module.policy.critic, module.target_critic
    for p, q in zip(critic.parameters(), target.parameters()):  # target trails the critic
        assert not torch.equal(p, q)
    if model == "multihead_mlp":
        assert module.policy.actor.net.heads.weight.shape[0] == 1  # MT1: one head
    loaded, _, _ = load_run(str(tmp_path / "checkpoints" / "last.ckpt"))  # evaluate.py's path
    assert isinstance(loaded, MTSAC)
    evaluator = Evaluator(mw.describe("MT1", "reach-v3", True, max_episode_steps=10), "test",
                          seed=3, mt_episodes=2, vector_strategy="sync")
    try:
        result = evaluator.run(loaded)
    finally:
        evaluator.close()
    assert result.split == "train" and 0.0 <= result.success_rate <= 1.0


# the overlapped case (two env workers started twice: ~14 s on the loaded VM) in the slow part
@pytest.mark.parametrize("overlap", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resume_with_the_buffer_continues_without_a_new_warm_up(overlap, tmp_path):
    """With data.overlap (two env workers) each iteration ends with a step in flight: the
    checkpoint's env call waits for it, and its transitions are not stored (a resume resets the
    envs), so the buffer holds one step fewer than were taken."""
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["algorithm.checkpoint_buffer=true"]
    if overlap:
        args += ["data.overlap=true", "data.num_workers=2", "data.vector_strategy=process"]
    lag = int(overlap)
    train(_cfg(first, *args, "trainer.max_steps=1"))
    ckpt = first / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(str(ckpt))["offpolicy"]
    assert saved["vector_steps"] == 7 and saved["replay"]["size"] == 7 - lag
    _, objs = train(_cfg(second, *args, "trainer.max_steps=2", f"ckpt_path={ckpt}"))
    module = objs["module"]
    assert module.vector_steps == 10 and module.env_steps == 2 * 10  # 3 more steps, no warm-up
    assert module.replay.size == 10 - 2 * lag
    # the restored rows are the saved ones
    torch.testing.assert_close(module.replay.data["obs"][:, :7 - lag], saved["replay"]["obs"])
    rows = _train_rows(second / "csv" / "metrics.csv")
    assert [float(r["train/env_steps"]) for r in rows] == [20.0]  # one more iteration logged


def test_resume_without_the_buffer_refills_it_before_updating(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(_cfg(first, "trainer.max_steps=1"))
    ckpt = first / "checkpoints" / "last.ckpt"
    assert "replay" not in read_checkpoint(str(ckpt))["offpolicy"]
    _, objs = train(_cfg(second, "trainer.max_steps=2", f"ckpt_path={ckpt}"))
    module = objs["module"]
    # a new warm-up of 4 vector steps, then 3 updates: the buffer holds only those 7 steps
    assert module.vector_steps == 7 + 7 and module.replay.size == 7


def test_max_env_steps_stops_any_method_at_its_budget(tmp_path, caplog):
    # MT-PPO on MT1: 2 slots x 1 episode x 10 steps = 20 env steps per iteration
    ppo = [o for o in TINY if not o.startswith("algorithm.")] + [
        "algorithm=mt_ppo", "benchmark=mt1", "algorithm.update_epochs=1"]
    _, objs = train(compose_cfg(ppo + ["trainer.max_steps=2", "max_env_steps=50"], tmp_path))
    assert objs["trainer"].global_step == 3 and objs["module"].env_steps == 60  # past max_steps
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    # a budget reached before trainer.max_steps is a finished run, not an early stop
    caplog.clear()
    _, objs = train(compose_cfg(ppo + ["trainer.max_steps=5", "max_env_steps=30"],
                                tmp_path / "short"))
    assert objs["trainer"].global_step == 2 and objs["module"].env_steps == 40
    assert "finished after 2 meta-iterations" in caplog.text and "stopped early" not in caplog.text
    # resumed at its budget: finished, nothing more runs and last.ckpt stays the finished one
    ckpt = tmp_path / "short" / "checkpoints" / "last.ckpt"
    _, objs = train(compose_cfg(ppo + ["trainer.max_steps=5", "max_env_steps=30",
                                       f"ckpt_path={ckpt}"], tmp_path / "short"))
    assert objs["trainer"].global_step == 2 and objs["module"].env_steps == 40
    assert torch.load(ckpt, weights_only=True)["env_steps"] == 40
    # MT-SAC: 14 env steps in the first iteration (warm-up), 6 per iteration after
    _, objs = train(_cfg(tmp_path / "sac", "trainer.max_steps=1", "max_env_steps=20"))
    assert objs["trainer"].global_step == 2 and objs["module"].env_steps == 20


@pytest.mark.parametrize("args,message", [
    (["max_env_steps=0"], "max_env_steps must be > 0 or null"),
    (["algorithm.tau=0"], "algorithm.tau must be > 0"),
    (["algorithm.utd=0"], "algorithm.utd must be > 0"),
    (["algorithm.scheduler={_target_:torch.optim.lr_scheduler.ConstantLR,_partial_:true}"],
     "set algorithm.scheduler=null"),
    (["model=gru"], "model=gru is a recurrent policy"),
    (["model.squash=false"], "needs tanh-squashed actions; set model.squash=true"),
])
def test_bad_mt_sac_settings_are_config_errors(args, message, tmp_path):
    with pytest.raises(ConfigError, match=message):  # before anything is built
        schema.validate(_cfg(tmp_path, *args))


@pytest.mark.parametrize("name", ["mt10_mtmhsac", "mt50_mtmhsac", "mt10_mtmhsac_cpu"])
def test_mt_sac_experiment_files_compose_and_validate(name, tmp_path):
    cfg = compose_cfg([f"experiment={name}"], tmp_path)
    schema.validate(cfg)
    assert cfg.algorithm._target_.endswith("MTSAC") and cfg.max_env_steps > 0
    assert cfg.model._target_.endswith("MultiHeadActorCritic")


class FinalParams(L.Callback):
    """Saves each rank's parameters at the end (module level: spawned ranks unpickle it)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.named_parameters()}

    def on_train_end(self, trainer, pl_module):
        torch.save({"initial": self.initial, "env_steps": pl_module.env_steps,
                    "final": {k: v.detach().clone() for k, v in pl_module.named_parameters()}},
                   f"{self.path}/rank{trainer.global_rank}.pt")


@pytest.mark.slow  # two spawned ranks: ~60-90 s
def test_mt_sac_on_two_ddp_ranks_keeps_one_set_of_parameters(tmp_path):
    """Each rank steps its own task slot into its own buffer; the gradients are averaged, so both
    ranks end every update with the same networks and temperatures."""
    from omegaconf import open_dict

    cfg = _cfg(tmp_path, "trainer=ddp_cpu", "trainer.max_steps=1", "data.num_workers=1")
    with open_dict(cfg):
        cfg.callbacks.final_params = {"_target_": "tests.test_mt_sac.FinalParams",
                                      "path": str(tmp_path)}
    train(cfg)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["env_steps"] == ranks[1]["env_steps"] == 2 * 7  # both ranks' steps counted
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name
        assert torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name]), name
    assert any(not torch.equal(v, ranks[0]["initial"][k]) for k, v in ranks[0]["final"].items())
