"""RL²-PPO, MT-PPO and the model choices behind the same DataModule, evaluation and entry points:
one training step and the protocol for each, RL²'s trial boundaries, mismatched choices."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import types

import gymnasium as gym
import pytest
import torch

from metarl_lightning import config as schema
from metarl_lightning import envs as mw
from metarl_lightning.algorithms import RL2PPO
from metarl_lightning.algorithms.sampling import slot_generators
from metarl_lightning.checkpoints import load_run
from metarl_lightning.data.collector import RolloutCollector, VectorStepper
from metarl_lightning.evaluation import Evaluator
from metarl_lightning.policies import GRUActorCritic, MultiHeadActorCritic
from metarl_lightning.policies.distributions import tanh_gaussian_log_prob
from metarl_lightning.types import ConfigError, Rollout
from tests.conftest import ROOT, TINY, algorithm_kwargs, compose_cfg
from tests.test_evaluation import StopAtStep, _train_rows  # noqa: F401  (StopAtStep by path)
from train import train

# TINY minus MAML's algorithm keys, plus the PPO methods' own.
BASE = [o for o in TINY if not o.startswith("algorithm.")] + ["algorithm.update_epochs=2"]
METHODS = {  # name -> overrides of a tiny run on the benchmark it is meant for
    "rl2_ppo": ["algorithm=rl2_ppo", "model=gru"],
    "mt_ppo": ["algorithm=mt_ppo", "benchmark=mt1"],
    "mt_ppo_multihead": ["algorithm=mt_ppo", "benchmark=mt1", "model=multihead_mlp"],
    # Gaussian actions clipped to the box (model.squash=false) through sampling, update, protocol
    "rl2_ppo_clipped": ["algorithm=rl2_ppo", "model=gru", "model.squash=false"],
    # a state-dependent log-std (the GRU state's linear head) through the same path
    "rl2_ppo_std_head": ["algorithm=rl2_ppo", "model=gru", "model.std_type=head"],
    "mt_ppo_clipped": ["algorithm=mt_ppo", "benchmark=mt1", "model.squash=false"],
}


def _cfg(tmp_path, *extra):
    return compose_cfg(BASE + list(extra), tmp_path)


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_one_step_and_follows_the_protocol(method, tmp_path):
    cfg = _cfg(tmp_path, *METHODS[method], "trainer.max_steps=1")
    metrics, objs = train(cfg)
    module = objs["module"]
    episodes = cfg.algorithm.episodes_per_task
    # one phase (no query): tasks x episodes x steps
    assert module.env_steps == 2 * episodes * 10 and objs["trainer"].global_step == 1
    for key in ("train/policy_loss", "train/value_loss", "train/approx_kl", "train/grad_norm",
                "train/success_post", "train/env_steps", "perf/env_steps_per_s"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    if method.startswith("mt_ppo"):
        assert 0.0 <= metrics["train/mean_action_saturation"] <= 1.0
    bench = cfg.benchmark
    info = mw.describe(bench.name, "reach-v3", bench.use_one_hot, method.startswith("rl2_ppo"),
                       max_episode_steps=10)
    evaluator = Evaluator(info, "test", seed=3,
                          meta_batch_size=5 if bench.name == "ML1" else None,
                          num_evals=2, adaptation_episodes=2,
                          evaluation_episodes=1, mt_episodes=2, vector_strategy="sync")
    try:
        result = evaluator.run(module)
    finally:
        evaluator.close()
    assert 0.0 <= result.success_rate <= 1.0 and list(result.per_task) == ["reach-v3"]
    if bench.name == "ML1":  # 5 envs x 2 rounds x (2 adaptation + at most 1 evaluation episode)
        assert result.split == "test" and 5 * 2 * 2 * 10 < result.env_steps <= 5 * 2 * 3 * 10
    else:  # MT: 5 envs of the one training task run until 2 episodes have ended
        assert result.split == "train" and 0 < result.env_steps <= 5 * 10


class Recorder:
    """Delegates to a learner and records the recurrent state each act/mean_action receives."""

    def __init__(self, learner):
        self.learner, self.seen = learner, []

    def __getattr__(self, name):
        return getattr(self.learner, name)

    def act(self, params, obs, state=None):
        self.seen.append(("act", state.clone(), obs.clone()))
        return self.learner.act(params, obs, state)

    def mean_action(self, params, obs, state=None):
        self.seen.append(("mean", state.clone(), obs.clone()))
        return self.learner.mean_action(params, obs, state)

    def sampler(self):  # what the collector calls: the sampler's act, recorded
        inner, seen = self.learner.sampler(), self.seen

        class Recording(type(inner)):
            def act(self, params, obs, state, noise):
                seen.append(("act", state.clone(), obs.clone()))
                return inner.act(params, obs, state, noise)

        return Recording(inner.module)


def _rl2(obs_dim, seed=0, **overrides):
    torch.manual_seed(seed)
    policy = GRUActorCritic(obs_dim, 4, hidden_dim=8)
    return RL2PPO(policy, optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                  **algorithm_kwargs("rl2_ppo", **overrides))


def _ml1_recurrent_envs(tasks=2, horizon=5):
    info = mw.describe("ML1", "reach-v3", recurrent_info=True)
    fns = mw.make_env_fns(info, split="train", meta_batch_size=tasks, benchmark_seed=1,
                          env_seed=1, max_episode_steps=horizon)
    return info, gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def test_rl2_state_resets_at_trial_boundaries_not_between_episodes():
    H, K = 5, 3  # a trial of 3 episodes of 5 steps
    info, envs = _ml1_recurrent_envs(horizon=H)
    assert info.obs_dim == 39 + 4 + 2 and envs.single_observation_space.shape == (45,)
    module = _rl2(info.obs_dim)
    rec = Recorder(module)
    try:
        collector = RolloutCollector(VectorStepper(envs, [[0, 1]], K * H),
                                     slot_generators(1, [0, 1]), K, H)
        first = collector.collect(rec)
        calls_first, rec.seen = rec.seen, []
        collector.collect(rec)  # the next trial: new tasks
        calls_second = rec.seen
    finally:
        envs.close()
    assert first.query is None and first.stats["env_steps"] == 2 * K * H
    for calls in (calls_first, calls_second):
        states = [s for _, s, _ in calls]
        assert len(states) == K * H
        assert torch.equal(states[0], torch.zeros_like(states[0]))  # trial start: reset
        # Inside the trial, including the episode starts at t = H and 2H, never zero again.
        assert all(s.abs().sum() > 0 for s in states[1:])
        # The episode-start flag (last obs entry) is 1 exactly at t = 0, H, 2H.
        flags = [float(o[0, 0, -1]) for _, _, o in calls]
        assert flags == [1.0 if t % H == 0 else 0.0 for t in range(K * H)]
    assert calls_first[-1][1].abs().sum() > 0  # the first trial ended with a non-zero state...
    # ...and the update's unroll of the whole trial from zeros gives the sampling-time
    # log-probs: same hidden states as at sampling, no reset at the episode boundaries.
    trials, policy = first.support, module.policy
    with torch.no_grad():
        mean, log_std, _ = module.unroll(trials.obs)  # (T, K*H, act)
        # the same policy, reset at every episode start instead
        mean_reset = torch.cat([module.unroll(trials.obs[:, k * H:(k + 1) * H])[0]
                                for k in range(K)], 1)
    unrolled = tanh_gaussian_log_prob(mean, log_std, trials.raw_actions, policy.action_scale)
    reset_each_episode = tanh_gaussian_log_prob(mean_reset, log_std, trials.raw_actions,
                                                policy.action_scale)
    torch.testing.assert_close(unrolled, trials.log_probs, atol=1e-5, rtol=1e-5)
    # A policy reset at every episode would have sampled differently (the test can fail).
    assert (reset_each_episode[:, H:] - trials.log_probs[:, H:]).abs().max() > 1e-3


def test_rl2_gae_runs_across_episodes_and_ends_at_the_trial():
    module = _rl2(45)
    module.hparams.gamma, module.hparams.gae_lambda = 1.0, 1.0
    T, N = 2, 6
    z = torch.zeros(T, N)
    dones = z.clone()
    dones[:, 2] = dones[:, 5] = 1.0  # two episodes of 3 steps
    rollout = Rollout(obs=torch.randn(T, N, 45), next_obs=torch.randn(T, N, 45),
                      raw_actions=torch.zeros(T, N, 4), log_probs=z, rewards=torch.ones(T, N),
                      terminated=z, dones=dones, advantages=z, returns=z)
    out = module.process_rollout(rollout)
    # gamma = lambda = 1: the return-to-go of the whole trial, across the episode boundary.
    expected = torch.arange(N, 0, -1, dtype=torch.float32) * module.hparams.reward_scale
    torch.testing.assert_close(out.returns, expected.expand(T, N))


def _straight_and_resumed(tmp_path, method):
    """3 iterations in one run (in tmp_path), and 1 iteration + a resume to 3 from its checkpoint:
    (the straight run's last metrics, its train/* rows, the resumed run's rows, the checkpoint)."""
    metrics, _ = train(_cfg(tmp_path, *method, "trainer.max_steps=3"))
    first, second = tmp_path / "first", tmp_path / "second"
    train(compose_cfg(BASE + method + ["trainer.max_steps=3",
                                       "+callbacks.stop._target_=tests.test_evaluation.StopAtStep",
                                       "+callbacks.stop.step=1"], first))
    ckpt = first / "checkpoints" / "last.ckpt"
    train(compose_cfg(BASE + method + ["trainer.max_steps=3", f"ckpt_path={ckpt}"], second))
    return (metrics, _train_rows(tmp_path / "csv" / "metrics.csv"),
            _train_rows(second / "csv" / "metrics.csv"), ckpt)


def test_rl2_task_reward_norm_rescales_each_slot_to_the_mean_of_the_running_means():
    """algorithm.task_reward_norm=d: slot i's rewards are multiplied by mean_j(m_j) / m_i, m the
    bias-corrected EMA (decay d per iteration) of each slot's mean per-step reward; the
    statistics travel in the checkpoint."""
    module = _rl2(45, task_reward_norm=0.5)
    module.hparams.gamma, module.hparams.gae_lambda = 1.0, 1.0
    T, N = 2, 4
    z = torch.zeros(T, N)
    dones = z.clone()
    dones[:, -1] = 1.0

    def trial(r0, r1):
        rewards = torch.tensor([[r0] * N, [r1] * N])
        return Rollout(obs=torch.randn(T, N, 45), next_obs=torch.randn(T, N, 45),
                       raw_actions=torch.zeros(T, N, 4), log_probs=z, rewards=rewards,
                       terminated=z, dones=dones)

    assert module.slot_reward_scales() is None  # nothing seen yet: reward_scale alone
    module.observe_slot_rewards(trial(1.0, 4.0).rewards)
    torch.testing.assert_close(module.slot_reward_scales(), torch.tensor([2.5, 0.625]))
    module.observe_slot_rewards(trial(3.0, 4.0).rewards)
    # EMA: 0.5 * (0.5 * [1, 4]) + 0.5 * [3, 4] = [1.75, 3], over 1 - 0.5^2: [7/3, 4]
    m = torch.tensor([7 / 3, 4.0])
    torch.testing.assert_close(module.slot_reward_scales(), m.mean() / m)
    out = module.process_rollout(trial(2.0, 2.0))  # equal raw rewards, unequal scales
    expected = (torch.arange(N, 0, -1) * 2.0 * module.hparams.reward_scale)[None] * (m.mean() / m)[:, None]
    torch.testing.assert_close(out.returns, expected.float())

    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    fresh = _rl2(45, task_reward_norm=0.5)
    fresh.on_load_checkpoint(checkpoint)
    torch.testing.assert_close(fresh.slot_reward_scales(), module.slot_reward_scales())
    with pytest.raises(ConfigError, match="resume with the same benchmark.meta_batch_size"):
        fresh.observe_slot_rewards(torch.ones(3, N))
    fresh._trainer = types.SimpleNamespace(world_size=2)  # DDP: refused before any collection
    with pytest.raises(ConfigError, match="set algorithm.task_reward_norm=null or trainer.devices=1"):
        fresh.on_fit_start()


def test_rl2_task_reward_norm_trains_and_resumes_exactly(tmp_path):
    """The statistics are part of the exact resume: without them in the checkpoint the resumed
    run's scales, advantages and losses would differ from the uninterrupted run's."""
    method = METHODS["rl2_ppo"] + ["algorithm.task_reward_norm=0.5",
                                   "callbacks.meta_eval.num_evals=0"]
    metrics, reference, resumed, ckpt = _straight_and_resumed(tmp_path, method)
    assert 0 < metrics["train/task_reward_scale_min"] <= 1 <= metrics["train/task_reward_scale_max"]
    assert torch.load(ckpt, weights_only=False)["slot_reward_ema"]["updates"] == 1
    assert resumed == reference[1:]


def test_rl2_chunks_unrolled_from_their_sampling_time_states_match_the_whole_trial():
    """algorithm.bptt_episodes: each chunk starts from the state the whole-trial unroll has there,
    so the chunked forward pass is the sampling-time one (only the gradient is truncated)."""
    module = _rl2(45)
    obs, L = torch.randn(3, 12, 45), 4
    with torch.no_grad():
        whole = module.unroll(obs)
        starts = module.chunk_states(obs, L)  # (3 trials, 3 chunks, hidden)
        chunks = [module.unroll(obs[:, c * L:(c + 1) * L], starts[:, c]) for c in range(3)]
        from_zero = torch.cat([module.unroll(obs[:, c * L:(c + 1) * L])[2] for c in range(3)], 1)
    assert starts.shape == (3, 3, 8) and not starts.requires_grad
    assert starts[:, 0].abs().sum() == 0 and (starts[:, 1:].abs().sum(-1) > 0).all()
    for i in range(3):  # mean, log_std, values
        torch.testing.assert_close(torch.cat([c[i] for c in chunks], 1), whole[i])
    assert (from_zero[:, L:] - whole[2][:, L:]).abs().max() > 1e-3  # the states matter


def test_rl2_bptt_chunks_are_the_update_minibatch_items(tmp_path):
    """bptt_episodes=1 on 2 trials of 2 episodes: 4 one-episode chunks, so num_minibatches=4
    takes 4 gradient steps per epoch (whole trials would give min(4, 2) = 2)."""
    cfg = _cfg(tmp_path, *METHODS["rl2_ppo"], "algorithm.bptt_episodes=1",
               "algorithm.num_minibatches=4", "trainer.max_steps=1",
               "callbacks.meta_eval.num_evals=0")
    metrics, objs = train(cfg)
    module = objs["module"]
    assert cfg.benchmark.meta_batch_size * cfg.algorithm.episodes_per_task == 4
    adam = module.optimizers().optimizer
    assert {int(adam.state[p]["step"]) for p in module.policy.parameters()} == {
        cfg.algorithm.update_epochs * 4}
    for key in ("train/policy_loss", "train/value_loss", "train/grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key])), key


def test_rl2_evaluation_state_spans_the_round_and_resets_at_init():
    info = mw.describe("ML1", "reach-v3", recurrent_info=True)
    module = _rl2(info.obs_dim)
    rec = Recorder(module)
    evaluator = Evaluator(mw.describe("ML1", "reach-v3", recurrent_info=True, max_episode_steps=10),
                          "test", seed=3, meta_batch_size=5,
                          num_evals=2, adaptation_episodes=2, evaluation_episodes=1,
                          vector_strategy="sync")
    try:
        evaluator.run(rec)
    finally:
        evaluator.close()
    kinds = [k for k, _, _ in rec.seen]
    zero = [bool((s == 0).all()) for _, s, _ in rec.seen]
    # Each round: 2 adaptation episodes (act) then evaluation episodes (mean action) on the same
    # trial; the state is zero exactly at the first step of each round (init), and carries over
    # the adaptation episodes' boundary and into the evaluation episodes.
    starts = [i for i, z in enumerate(zero) if z]
    assert starts == [0, kinds.index("act", kinds.index("mean"))]
    assert kinds[:20] == ["act"] * 20 and kinds[20] == "mean"
    assert not zero[10] and not zero[20]  # second adaptation episode, first evaluation step


def test_multihead_policy_selects_the_head_of_the_one_hot_task():
    torch.manual_seed(0)
    policy = MultiHeadActorCritic(39 + 3, 4, num_tasks=3, hidden_dim=8, num_layers=2)
    obs = torch.randn(3, 42)
    obs[:, 39:] = torch.eye(3)  # sample k is task k
    mean, _ = policy.actor(obs)
    heads = policy.actor.net.heads
    h = policy.actor.net.trunk(obs)
    for k in range(3):
        torch.testing.assert_close(mean[k], h[k] @ heads.weight[k] + heads.bias[k])
    policy.value(obs[:1]).sum().backward()  # task 0 only: the other critic heads get nothing
    grad = policy.critic.heads.weight.grad
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


@pytest.mark.parametrize("args,message", [
    (["model=gru"], "model=gru is a recurrent policy, for algorithm=rl2_ppo"),
    (["algorithm=rl2_ppo"], "algorithm=rl2_ppo adapts in a recurrent policy's hidden state; "
                            "add model=gru"),
    (["algorithm=rl2_ppo", "model=gru", "benchmark=mt10"], "runs on ML benchmarks, not MT10"),
    (["algorithm=rl2_ppo", "model=gru", "algorithm.bptt_episodes=3"],
     "algorithm.bptt_episodes must be null or a positive divisor of "
     "algorithm.episodes_per_task=2, got 3; set e.g. algorithm.bptt_episodes=1"),
    (["algorithm=mt_ppo"], "algorithm=mt_ppo runs on MT benchmarks, not ML1; use benchmark=mt10"),
    (["model=multihead_mlp"], "model=multihead_mlp has one head per MT task"),
    (["algorithm=mt_ppo", "benchmark=mt10", "benchmark.use_one_hot=false"],
     "set benchmark.use_one_hot=true"),
])
def test_mismatched_choices_are_config_errors_naming_the_fix(args, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        schema.validate(compose_cfg(args, tmp_path))


@pytest.mark.parametrize("args", [["algorithm=rl2_ppo", "model=gru"],
                                  ["algorithm=mt_ppo", "benchmark=mt10", "model=multihead_mlp"],
                                  ["benchmark=mt10", "model=multihead_mlp"],  # MAML, multi-head
                                  ["algorithm.learn_inner_lr=true"]])
def test_matching_choices_validate(args, tmp_path):
    schema.validate(compose_cfg(args, tmp_path))


def test_train_py_mismatch_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "algorithm=mt_ppo",
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "algorithm=mt_ppo runs on MT benchmarks" in errors[0]
    assert "Traceback" not in proc.stderr


def test_rl2_checkpoint_resumes_exactly_and_evaluates_with_evaluate_py(tmp_path, forked_python):
    _, reference, resumed, _ = _straight_and_resumed(tmp_path, METHODS["rl2_ppo"])
    assert resumed == reference[1:]

    last = tmp_path / "checkpoints" / "last.ckpt"
    module, run_cfg, _ = load_run(str(last))
    assert isinstance(module, RL2PPO) and module.policy.obs_dim == 45
    out = tmp_path / "eval"
    # `python evaluate.py ...` forked from a preloaded interpreter (conftest.ForkedPython);
    # test_evaluation.py runs a fresh one
    proc = forked_python.run("evaluate.py", [
        f"ckpt_path={last}", "eval.num_evals=1", "eval.meta_batch_size=2",
        "eval.adaptation_episodes=1", "eval.evaluation_episodes=1", "vector_strategy=sync",
        f"hydra.run.dir={out}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["benchmark"] == "ML1" and report["split"] == "test"
    assert report["env_steps_trained"] == 3 * 2 * 2 * 10  # iterations x tasks x trial x steps


def test_meta_sgd_learns_its_inner_learning_rates_in_training(tiny_cfg):
    metrics, objs = train(tiny_cfg("algorithm.learn_inner_lr=true", "algorithm.inner_lr=0.1"))
    lrs = torch.cat([p.detach().flatten() for p in objs["module"].inner_lrs.values()])
    assert (lrs != 0.1).any()  # moved by the outer optimizer
    assert metrics["train/inner_lr_mean"] != pytest.approx(0.1, abs=1e-7)


@pytest.mark.parametrize("name", ["ml1_rl2_cpu", "mt10_mt_ppo_cpu", "ml10_rl2_stdhead",
                                  "ml10_rl2_tbptt_rnorm"])
def test_method_experiment_files_compose_and_validate(name, tmp_path):
    cfg = compose_cfg([f"experiment={name}"], tmp_path)
    schema.validate(cfg)
    assert cfg.algorithm._target_.endswith(("RL2PPO", "MTPPO"))


def test_maml_trains_with_clipped_gaussian_actions(tiny_cfg):
    """model.squash=false through MAML-PPO's sampling, inner step and outer update: the stored
    raw actions are the clipped actions' Gaussian samples and the losses are finite."""
    cfg = tiny_cfg("model.squash=false", "trainer.max_steps=1")
    metrics, objs = train(cfg)
    module = objs["module"]
    assert module.policy.actor.squash is False
    for key in ("train/policy_loss", "train/inner_loss", "train/value_loss", "train/grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    with torch.no_grad():
        module.policy.actor.net[-1].bias.fill_(3.0)  # means far outside the [-1, 1] box
    obs = torch.zeros(1, 64, 39)
    mean_action, _ = module.mean_action(module.sampling_params(1), obs)
    assert torch.equal(mean_action, torch.ones_like(mean_action))  # clipped, not squashed
    action, raw, _, _ = module.act(module.sampling_params(1), obs)
    assert (raw > 1).any() and action.max() <= 1.0 and torch.equal(action[raw < 1], raw[raw < 1])


def test_maml_task_minibatches_take_epochs_x_minibatches_steps(tiny_cfg):
    """algorithm.outer_minibatches=2 on a 2-task meta-batch: each of the 2 outer epochs takes one
    gradient step per task (Adam's step count), Lightning counts one step per meta-iteration."""
    cfg = tiny_cfg("algorithm.outer_minibatches=2", "trainer.max_steps=1")
    metrics, objs = train(cfg)
    module = objs["module"]
    assert module.trainer.global_step == 1
    adam = module.optimizers().optimizer
    steps = {int(adam.state[p]["step"]) for p in module.policy.actor.parameters()}
    assert steps == {2 * 2}
    for key in ("train/policy_loss", "train/inner_loss", "train/explained_variance"):
        assert torch.isfinite(torch.tensor(metrics[key])), key


@pytest.mark.parametrize("method", ["maml_ppo", "mt_ppo",  # rl2: mt_ppo's _ppo_epochs path
                                    pytest.param("rl2_ppo", marks=pytest.mark.slow)])
def test_squashed_entropy_bonus_trains(method, tmp_path):
    """algorithm.entropy_bonus=squashed through each PPO method's update: the logged entropy is
    the squashed actions' (below the pre-squash Gaussian's at init, 4 x 1.419) and finite."""
    extra = {"maml_ppo": [], "mt_ppo": METHODS["mt_ppo"], "rl2_ppo": METHODS["rl2_ppo"]}[method]
    base = TINY if method == "maml_ppo" else BASE
    cfg = compose_cfg([*base, *extra, "algorithm.entropy_bonus=squashed", "trainer.max_steps=1",
                       "callbacks.meta_eval.num_evals=0"], tmp_path)
    metrics, _ = train(cfg)
    for key in ("train/policy_loss", "train/entropy", "train/grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["train/entropy"] < 4 * 1.4189 - 0.5  # tanh's log-Jacobian term is negative
