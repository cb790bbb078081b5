"""Rollout collection for one meta-iteration. Inner-loop learners (MAML): support episodes with
the meta-policy, inner-loop adaptation, then query episodes with the adapted policy. Other
learners (RL², MT-PPO): one phase of `episodes_per_task` episodes per task. Envs are re-tasked,
never rebuilt."""

from __future__ import annotations

import contextlib
import time

import gymnasium as gym
import numpy as np
import torch

from metarl_lightning.types import MetaBatch, MetaLearner, Params, Rollout, State


class RolloutCollector:
    """Steps a vector env holding one sub-env per task slot of the meta-batch.

    Training envs never terminate on success, so every episode lasts exactly
    `max_episode_steps` and all task slots stay in lockstep: a task's N = episodes * H steps
    are contiguous, episode k occupying steps [k*H, (k+1)*H).

    Each `collect` is one trial per task slot: new tasks are drawn, the learner's recurrent
    state (RL²; None for feed-forward policies) starts from `initial_state` and is carried
    through every step of the trial, across its episode boundaries (and from support into
    query). It is reset only here, when the next trial's tasks are drawn.
    """

    def __init__(self, envs: gym.vector.VectorEnv, episodes_per_task: int,
                 max_episode_steps: int):
        self.envs = envs
        self.episodes = episodes_per_task
        self.horizon = max_episode_steps
        self.num_tasks = envs.num_envs
        self.obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.act_dim = int(np.prod(envs.single_action_space.shape))

    def collect(self, learner: MetaLearner) -> MetaBatch:
        with single_threaded_torch():
            return self._collect(learner)

    def _collect(self, learner: MetaLearner) -> MetaBatch:
        start = time.perf_counter()
        # Re-task: each sub-env moves to its next goal (Meta-World's pseudorandom cycle).
        self.envs.call("sample_tasks")
        obs, _ = self.envs.reset()
        params = learner.sampling_params(self.num_tasks)
        state = learner.initial_state(self.num_tasks)  # a new trial: the only reset
        support, obs, state, ret_pre, succ_pre = self._run(learner, params, obs, state)
        support = learner.process_rollout(support)
        if learner.inner_loop:
            adapted = learner.adapt_for_sampling(params, support)
            query, obs, state, ret_post, succ_post = self._run(learner, adapted, obs, state)
            query = learner.process_rollout(query)
        else:
            # One phase: "pre" is each trial's first episode, "post" its last (RL² adapts in
            # between, in its hidden state; for MT-PPO both are the same policy).
            query, ret_post, succ_post = None, ret_pre[:, -1], succ_pre[:, -1]
            ret_pre, succ_pre = ret_pre[:, 0], succ_pre[:, 0]
        phases = 2 if learner.inner_loop else 1
        steps = phases * self.num_tasks * self.episodes * self.horizon
        elapsed = time.perf_counter() - start
        stats = {
            "return_pre": float(ret_pre.mean()), "return_post": float(ret_post.mean()),
            "success_pre": float(succ_pre.mean()), "success_post": float(succ_post.mean()),
            "env_steps": float(steps), "collect_time": elapsed,
            # (T,): per-task logging (algorithms/base.py); mean over a slot's query episodes
            "success_post_per_slot": np.asarray(succ_post, np.float32).reshape(self.num_tasks, -1)
            .mean(1),
        }
        return MetaBatch(support, query, stats)

    @torch.no_grad()
    def _run(self, learner: MetaLearner, params: Params, obs: np.ndarray, state: State):
        T, H, K = self.num_tasks, self.horizon, self.episodes
        N = K * H
        buf_obs = np.empty((T, N, self.obs_dim), np.float32)
        buf_next = np.empty((T, N, self.obs_dim), np.float32)
        buf_raw = np.empty((T, N, self.act_dim), np.float32)
        buf_logp = np.empty((T, N), np.float32)
        buf_rew = np.empty((T, N), np.float32)
        buf_term = np.zeros((T, N), np.float32)
        buf_done = np.zeros((T, N), np.float32)
        buf_succ = np.zeros((T, N), np.float32)
        for t in range(N):
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            # (T, 1, act), (T, 1, act), (T, 1); the state runs on across episode ends
            action, raw, logp, state = learner.act(params, obs_t[:, None], state)
            next_obs, rew, term, trunc, infos = self.envs.step(action[:, 0].cpu().numpy())
            done = np.logical_or(term, trunc)
            buf_obs[:, t], buf_raw[:, t], buf_logp[:, t] = obs, raw[:, 0].cpu(), logp[:, 0].cpu()
            buf_rew[:, t], buf_term[:, t], buf_done[:, t] = rew, term, done
            true_next = next_obs
            succ = infos.get("success", np.zeros(T))
            if done.any():
                if not done.all() or (t + 1) % H:
                    raise RuntimeError(
                        f"episodes ended at step {t + 1} of {H} for tasks {np.flatnonzero(done)}; "
                        "training envs must run full episodes (terminate_on_success=False)"
                    )
                true_next = np.stack(infos["final_obs"])
                succ = infos["final_info"]["success"]
            buf_next[:, t], buf_succ[:, t] = true_next, succ
            obs = next_obs
        rollout = Rollout(
            obs=torch.from_numpy(buf_obs), next_obs=torch.from_numpy(buf_next),
            raw_actions=torch.from_numpy(buf_raw), log_probs=torch.from_numpy(buf_logp),
            rewards=torch.from_numpy(buf_rew), terminated=torch.from_numpy(buf_term),
            dones=torch.from_numpy(buf_done), advantages=torch.zeros(T, N),
            returns=torch.zeros(T, N),
        )
        episode_return = buf_rew.reshape(T, K, H).sum(-1)  # (T, K)
        episode_success = buf_succ.reshape(T, K, H).max(-1)  # success at any step, (T, K)
        return rollout, obs, state, episode_return, episode_success


@contextlib.contextmanager
def single_threaded_torch():
    """Per-step policy forwards are tiny; with env workers busy on every core, torch's intra-op
    threads spin-wait for a core: measured 30-50 ms per forward with 2 threads vs 0.3 ms with 1
    on the 2-core machine. The update (large batches, workers idle) keeps all threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
