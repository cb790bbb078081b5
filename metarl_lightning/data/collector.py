"""Rollout collection for one meta-iteration. Inner-loop learners (MAML): support episodes with
the meta-policy, inner-loop adaptation, then query episodes with the adapted policy. Other
learners (RL², MT-PPO): one phase of `episodes_per_task` episodes per task. Envs are re-tasked,
never rebuilt.

Two steppers run a phase: `WorkerStepper` (default, `data.collector=workers`): rollout worker
processes that run whole phases with the policy inside them (data/workers.py); `VectorStepper`
(`data.collector=vector`): a vector env stepped from this process, one vector step at a time,
the reference the worker path is tested against (identical rollouts for a fixed seed).

The stream yields raw experience: advantages and returns are computed in `training_step`.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch

from metarl_lightning.types import MetaBatch, MetaLearner, Params, Rollout

if TYPE_CHECKING:
    from metarl_lightning.algorithms.sampling import Sampler

FIELDS = ("obs", "next_obs", "raw_actions", "log_probs", "rewards", "terminated", "dones",
          "success")


class RolloutCollector:
    """One trial per task slot per `collect`: new tasks are drawn and the learner's recurrent
    state (RL²; None for feed-forward policies) starts afresh; it runs on through every step of
    the trial, across its episode boundaries (and from support into query).

    Training envs never terminate on success, so every episode lasts exactly
    `max_episode_steps` and a task's N = episodes * H steps are contiguous, episode k occupying
    steps [k*H, (k+1)*H).

    `generators`: one torch.Generator per task slot for the action noise (checkpointed by the
    DataModule), so a slot's noise does not depend on which process steps it.
    """

    def __init__(self, stepper, generators: list[torch.Generator], episodes_per_task: int,
                 max_episode_steps: int):
        self.stepper, self.generators = stepper, generators
        self.episodes, self.horizon = episodes_per_task, max_episode_steps
        self.num_tasks = len(generators)

    def collect(self, learner: MetaLearner) -> MetaBatch:
        with single_threaded_torch():
            return self._collect(learner)

    def _collect(self, learner: MetaLearner) -> MetaBatch:
        start = time.perf_counter()
        T, K, H = self.num_tasks, self.episodes, self.horizon
        sampler = learner.sampler()
        clock = time.perf_counter()
        support = self.stepper.run(sampler, None, self.generators, True, H)
        phase_time = time.perf_counter() - clock
        waits, cpu = [getattr(self.stepper, "last_wait_share", 0.0)], [self._worker_seconds()]
        ret_pre = support.rewards.reshape(T, K, H).sum(-1)  # (T, K)
        succ_pre = support_success = self.stepper.success.reshape(T, K, H).amax(-1)
        query = None
        if learner.inner_loop:
            # adapt_for_sampling computes the support advantages it needs itself
            adapted = learner.adapt_for_sampling(learner.sampling_params(T), support)
            clock = time.perf_counter()
            query = self.stepper.run(sampler, adapted, self.generators, False, H)
            phase_time += time.perf_counter() - clock
            waits.append(getattr(self.stepper, "last_wait_share", 0.0))
            cpu.append(self._worker_seconds())
            ret_post = query.rewards.reshape(T, K, H).sum(-1)
            succ_post = self.stepper.success.reshape(T, K, H).amax(-1)
        else:
            # One phase: "pre" is each trial's first episode, "post" its last (RL² adapts in
            # between, in its hidden state; for MT-PPO both are the same policy).
            ret_post, succ_post = ret_pre[:, -1], support_success[:, -1]
            ret_pre, succ_pre = ret_pre[:, 0], succ_pre[:, 0]
        phases = 2 if learner.inner_loop else 1
        stats = {
            "return_pre": float(ret_pre.mean()), "return_post": float(ret_post.mean()),
            "success_pre": float(succ_pre.mean()), "success_post": float(succ_post.mean()),
            "env_steps": float(phases * T * K * H), "collect_time": time.perf_counter() - start,
            "worker_wait_share": float(np.mean(waits)),
            # wall seconds of the rollout phases alone (collect_time less the adaptation between)
            "phase_time": phase_time,
            # rollout workers' CPU seconds this iteration, summed over workers and phases: busy,
            # and inside env.step (benchmarks/throughput.py splits an iteration with them)
            "worker_busy_seconds": float(sum(b for b, _ in cpu)),
            "worker_env_seconds": float(sum(e for _, e in cpu)),
            # (T,): per-task logging (runlog.per_task_success); mean over a slot's query episodes
            "success_post_per_slot": np.asarray(succ_post, np.float32).reshape(T, -1).mean(1),
        }
        return MetaBatch(support, query, stats)

    def _worker_seconds(self) -> tuple[float, float]:
        """(busy, in env.step) seconds of the last phase over all rollout workers; zeros for the
        in-process path."""
        return (sum(getattr(self.stepper, "last_busy", ())),
                sum(getattr(self.stepper, "last_env", ())))


class WorkerStepper:
    """Runs phases on `PhaseWorkers`: parameters and generator states in, the rollout out."""

    def __init__(self, workers):
        self.workers = workers
        self.success: torch.Tensor | None = None

    @property
    def last_wait_share(self) -> float:
        return self.workers.last_wait_share

    @property
    def last_busy(self) -> list[float]:
        return self.workers.last_busy

    @property
    def last_env(self) -> list[float]:
        return self.workers.last_env

    def run(self, sampler: Sampler, params: Params | None, generators, new_trial: bool,
            horizon: int) -> Rollout:
        a = self.workers.arrays
        if params is None:
            a["params"][0] = sampler.flat_parameters().cpu().numpy()
        else:
            a["params"][:] = sampler.flatten(params).cpu().numpy()
        for s, g in enumerate(generators):
            a["gen_states"][s] = g.get_state().numpy()
        self.workers.run_phase(new_trial, params is not None, horizon)
        for s, g in enumerate(generators):
            g.set_state(torch.from_numpy(a["gen_states"][s].copy()))
        out = {k: torch.from_numpy(a[k].copy()) for k in FIELDS}
        self.success = out.pop("success")
        return Rollout(**out)


class VectorStepper:
    """The in-process reference: a vector env stepped from here. The policy's forward runs over
    the same slot `groups` as the workers' (CPU matmuls are not row-independent), so the two
    paths give identical rollouts."""

    def __init__(self, envs: gym.vector.VectorEnv, groups: list[list[int]], steps: int):
        self.envs, self.groups, self.num_steps = envs, groups, steps  # steps per phase
        self.obs: np.ndarray | None = None
        self.states: list = []
        self.success: torch.Tensor | None = None

    @torch.no_grad()
    def run(self, sampler: Sampler, params: Params | None, generators, new_trial: bool,
            horizon: int) -> Rollout:
        from metarl_lightning.algorithms.sampling import draw_noise  # (algorithms imports us)

        envs, T = self.envs, self.envs.num_envs
        if new_trial:  # re-task: each sub-env moves to its next goal (pseudorandom cycle)
            envs.call("sample_tasks")
            self.obs, _ = envs.reset()
            self.states = [sampler.initial_state(len(g)) for g in self.groups]
        N = self.num_steps
        obs_dim, act_dim = self.obs.shape[-1], int(np.prod(envs.single_action_space.shape))
        buf = {k: np.zeros((T, N, obs_dim) if k in ("obs", "next_obs") else
                           (T, N, act_dim) if k == "raw_actions" else (T, N), np.float32)
               for k in FIELDS}
        obs = self.obs
        # each group's noise for the whole phase and its policy, as the workers have them
        noise = [draw_noise([generators[s] for s in g], act_dim, N).numpy() for g in self.groups]
        policies = [sampler.bind(None if params is None else {k: v[g] for k, v in params.items()})
                    for g in self.groups]
        for t in range(N):
            actions = np.empty((T, act_dim), np.float32)
            for j, g in enumerate(self.groups):
                actions[g], buf["raw_actions"][g, t], buf["log_probs"][g, t], self.states[j] = (
                    policies[j](obs[g], noise[j][:, t], self.states[j]))
            next_obs, rew, term, trunc, infos = envs.step(actions)
            done = np.logical_or(term, trunc)
            buf["obs"][:, t], buf["rewards"][:, t] = obs, rew
            buf["terminated"][:, t], buf["dones"][:, t] = term, done
            true_next, succ = next_obs, infos.get("success", np.zeros(T))
            if done.any():
                if not done.all() or (t + 1) % horizon:
                    raise RuntimeError(
                        f"episodes ended at step {t + 1} of {horizon} for tasks "
                        f"{np.flatnonzero(done)}; training envs must run full episodes "
                        "(terminate_on_success=False)")
                true_next = np.stack(infos["final_obs"])
                succ = infos["final_info"]["success"]
            buf["next_obs"][:, t], buf["success"][:, t] = true_next, succ
            obs = next_obs
        self.obs = obs
        out = {k: torch.from_numpy(v) for k, v in buf.items()}
        self.success = out.pop("success")
        return Rollout(**out)


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
