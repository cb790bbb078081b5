"""Off-policy data path (SAC): the vector env keeps stepping with the current actor, every step's
transitions go into a replay buffer, and the stream yields one task-balanced sample per gradient
step. The learner (the LightningModule) owns the buffer and the step counters, so they travel in
its checkpoint; the stream holds only the episodes in progress.

Replay storage: a plain preallocated per-task-slot tensor ring, not torchrl's ReplayBuffer.
benchmarks/replay_buffer.py measures both on the MT10 shapes (10 slots x 1e5, obs 49, act 4):
adding one vector step and drawing a task-balanced 10 x 128 batch. torchrl 0.14.1's
`ReplayBuffer(LazyTensorStorage)` has no task-balanced sampler, so it gets one buffer per task
(`extend` + `sample` each). Measured in one run on the 2-core VM (load ~9): ring 1.75 ms, torchrl
18.9 ms per add + sample (10.8x; 6.9x in an earlier run). Its TensorDict/sampler/writer layers
cost more than the data movement here, and the ring is ~60 lines with no new dependency, so
torchrl is not added.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch.utils.data import IterableDataset

from metarl_lightning.data.collector import single_threaded_torch
from metarl_lightning.errors import EnvFault

log = logging.getLogger(__name__)
FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")


class ReplayBatch(NamedTuple):
    """A task-balanced sample: S task slots x n transitions each."""

    obs: torch.Tensor  # (S, n, obs)
    actions: torch.Tensor  # (S, n, act) squashed actions as sent to the env
    rewards: torch.Tensor  # (S, n) raw env rewards
    next_obs: torch.Tensor  # (S, n, obs) true next obs (the final obs at a truncation)
    terminated: torch.Tensor  # (S, n) float: true termination only (no bootstrap)
    stats: dict[str, float]  # env steps since the last batch, recent episodes' return/success


class TaskReplayBuffer:
    """One ring of `capacity` transitions per task slot, preallocated; all slots are written in
    lockstep (one vector-env step adds one transition to each), so one `pos`/`size` serves all."""

    def __init__(self, num_slots: int, capacity: int, obs_dim: int, act_dim: int):
        shapes = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_obs": (obs_dim,),
                  "terminated": ()}
        self.data = {k: torch.zeros(num_slots, capacity, *s) for k, s in shapes.items()}
        self.num_slots, self.capacity = num_slots, capacity
        self.pos = self.size = 0

    def add(self, **step: torch.Tensor) -> None:
        """One transition per slot: each field (S, ...)."""
        for k in FIELDS:
            self.data[k][:, self.pos] = step[k]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, per_slot: int) -> dict[str, torch.Tensor]:
        """`per_slot` uniform draws (with replacement) from each slot's own transitions: every
        task gets the same share of the batch whatever its data (task-balanced, as
        metaworld-algorithms' MultiTaskReplayBuffer). Uses the global torch RNG (resumable)."""
        idx = torch.randint(self.size, (self.num_slots, per_slot))  # (S, n)
        # rows of the flattened (S * capacity, ...) storage: index_select measured 3-10x faster
        # than v[rows, idx] advanced indexing on the MT10 shapes
        flat = (torch.arange(self.num_slots)[:, None] * self.capacity + idx).flatten()
        return {k: v.flatten(0, 1).index_select(0, flat).unflatten(0, idx.shape)
                for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "size": self.size,
                **{k: v[:, :self.size].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["obs"].shape[0] != self.num_slots or state["size"] > self.capacity:
            raise ValueError(f"replay buffer of {state['obs'].shape[0]} slots x {state['size']} "
                             f"does not fit {self.num_slots} x {self.capacity}")
        for k in FIELDS:
            self.data[k][:, :state["size"]] = state[k]
        self.pos, self.size = int(state["pos"]), int(state["size"])


class OffPolicyStream(IterableDataset):
    """Endless stream of replay batches, one per gradient step.

    Each vector-env step: act (uniform random actions for the first `warmup_steps` vector steps,
    then the actor's samples), store (obs, action, reward, true next obs, terminated) per slot,
    then `utd` gradient steps per vector step (fractional ratios accumulate). Re-tasking: every
    episode reset draws the slot's next goal (Meta-World's sample_tasks_on_reset).
    `overlap` (data.overlap) with a vector env that has `step_async` (ProcessVectorEnv,
    AsyncVectorEnv): the step is sent, its updates run while the envs step, then its
    transitions are stored; same actions and update count as the serial loop, each batch drawn
    from the buffer as it was before that step. A checkpoint between (envs.call) waits for the
    step; a resume resets the envs, losing the episodes in progress and the step in flight.
    Env faults: as MetaBatchStream, rebuild through `restart` (the episodes in progress are lost)
    or stop.
    """

    def __init__(self, envs: Callable[[], gym.vector.VectorEnv], learner: Any,
                 restart: Callable[[], bool], overlap: bool):
        self.envs, self.learner, self.restart, self.overlap = envs, learner, restart, overlap

    def _reset(self) -> np.ndarray:
        envs = self.envs()
        envs.call("toggle_sample_tasks_on_reset", True)
        obs, _ = envs.reset()
        return obs

    def __iter__(self) -> Iterator[ReplayBatch]:
        learner, hp = self.learner, self.learner.hparams
        obs = self._reset()
        num_slots = obs.shape[0]
        buffer = learner.replay_buffer(num_slots, obs.shape[1])
        per_slot = learner.batch_per_slot(num_slots)
        episodes = _Episodes(num_slots)
        env_steps, env_wait, start = 0, 0.0, time.perf_counter()
        while True:
            try:
                with single_threaded_torch():
                    action = learner.explore(torch.as_tensor(obs, dtype=torch.float32))  # (S, act)
                envs = self.envs()
                # Overlap: the envs step while this step's updates run (their batches are drawn
                # before its transitions land, so each update misses only the newest S of the
                # buffer's transitions; the actions are the serial loop's). Figures: config.py.
                overlap = self.overlap and hasattr(envs, "step_async") and buffer.size > 0
                if overlap:
                    envs.step_async(action.numpy())
                else:
                    t0 = time.perf_counter()
                    step = envs.step(action.numpy())
                    env_wait += time.perf_counter() - t0
                    obs = episodes.store(buffer, obs, action, step)
                env_steps += num_slots
                learner.vector_steps += 1
                # Updates start after the warm-up (metaworld-algorithms: global_step > warmstart).
                if learner.vector_steps > learner.learning_starts:
                    learner.update_debt += hp.utd
                    while learner.update_debt >= 1.0:
                        learner.update_debt -= 1.0
                        stats = {"env_steps": float(env_steps), "env_wait": env_wait,
                                 "overlapped": float(overlap),  # the envs step meanwhile
                                 "collect_time": time.perf_counter() - start, **episodes.stats()}
                        yield ReplayBatch(**buffer.sample(per_slot), stats=stats)
                        env_steps, env_wait, start = 0, 0.0, time.perf_counter()
                if overlap:
                    t0 = time.perf_counter()
                    step = envs.step_wait()
                    env_wait += time.perf_counter() - t0
                    obs = episodes.store(buffer, obs, action, step)
            except EnvFault as fault:  # the step in flight is lost with the episodes
                log.warning("env fault: %s", str(fault).splitlines()[0])
                if not self.restart():
                    raise
                obs = self._reset()
                episodes.clear()


class _Episodes:
    """The stream's per-slot episode bookkeeping: stores each vector step's transitions and
    keeps the last finished episode of each slot for the logged return and success."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.ret, self.success = np.zeros(num_slots), np.zeros(num_slots)
        self.recent: collections.deque = collections.deque(maxlen=num_slots)  # (return, success)

    def clear(self) -> None:
        self.ret[:], self.success[:] = 0.0, 0.0

    def store(self, buffer: TaskReplayBuffer, obs: np.ndarray, action: torch.Tensor,
              step: tuple) -> np.ndarray:
        """Add (obs, action, reward, true next obs, terminated) per slot; returns the next obs."""
        next_obs, rew, term, trunc, infos = step
        done = np.logical_or(term, trunc)
        true_next, succ = next_obs, infos.get("success", np.zeros(self.num_slots))
        if done.any():  # same-step autoreset: the true final obs is in infos
            true_next, succ = next_obs.copy(), np.asarray(succ, np.float64).copy()
            for i in np.flatnonzero(done):
                true_next[i] = infos["final_obs"][i]
                succ[i] = infos["final_info"]["success"][i]
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
        buffer.add(obs=t(obs), actions=action, rewards=t(rew), next_obs=t(true_next),
                   terminated=t(term))
        self.ret += rew
        self.success = np.maximum(self.success, succ)
        for i in np.flatnonzero(done):
            self.recent.append((self.ret[i], self.success[i]))
            self.ret[i] = self.success[i] = 0.0
        return next_obs

    def stats(self) -> dict[str, float]:
        return {"return": float(np.mean([r for r, _ in self.recent] or [0.0])),
                "success": float(np.mean([s for _, s in self.recent] or [0.0]))}
