"""Adapter from a meta-learner (the LightningModule) to Meta-World's agent protocol.

`metaworld.evaluation` drives the episodes; this class only answers its calls (callers run it
under `single_threaded_torch`, as the training collector does):
`init` (fresh meta-parameters), `adapt_action` + `step` (collect adaptation data), `adapt`
(inner-loop update with the same code as training), `eval_action` and `reset`.

Recurrent learners (RL²): the state starts at `init()` (a new round of test tasks: a new trial)
and runs on through the adaptation episodes into the evaluation episodes of the same round;
`reset` (an episode ended) leaves it alone and `adapt` is a no-op, since adaptation lives in the
state. Learners without an inner loop keep no adaptation data.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from metaworld.evaluation import Timestep

from metarl_lightning.types import MetaLearner, Params, Rollout, State


class MetaLearnerAgent:
    def __init__(self, learner: MetaLearner, num_envs: int, deterministic: bool = True):
        self.learner, self.num_envs, self.deterministic = learner, num_envs, deterministic
        self.params: Params = learner.sampling_params(num_envs)
        self.state: State = learner.initial_state(num_envs)  # MT: one state for the whole run
        self._steps: list[Timestep] = []

    # MetaLearningAgent protocol -----------------------------------------------------------
    def init(self) -> None:
        self.params = self.learner.sampling_params(self.num_envs)
        self.state = self.learner.initial_state(self.num_envs)  # new round: a new trial
        self._steps = []

    def adapt_action(self, observations: npt.NDArray) -> tuple[npt.NDArray, dict[str, npt.NDArray]]:
        action, raw, logp, self.state = self.learner.act(self.params, _obs(observations),
                                                         self.state)
        return action[:, 0].cpu().numpy(), {"raw": raw[:, 0].cpu().numpy(),
                                            "log_prob": logp[:, 0].cpu().numpy()}

    def step(self, timestep: Timestep) -> None:
        if self.learner.inner_loop:  # others adapt without a gradient step: keep nothing
            self._steps.append(timestep)

    def adapt(self) -> None:
        if not self._steps:
            return
        self.params = self.learner.adapt_for_sampling(self.params, self._rollout())
        self._steps = []

    # Agent protocol ---------------------------------------------------------------------------
    def eval_action(self, observations: npt.NDArray) -> npt.NDArray:
        if self.deterministic:
            action, self.state = self.learner.mean_action(self.params, _obs(observations),
                                                          self.state)
        else:
            action, _, _, self.state = self.learner.act(self.params, _obs(observations),
                                                        self.state)
        return action[:, 0].cpu().numpy()

    def reset(self, env_mask: npt.NDArray[np.bool_]) -> None:
        pass  # an episode ended: no per-episode state (a recurrent state spans the round)

    # -----------------------------------------------------------------------------------------
    def _rollout(self) -> Rollout:
        """Stack the adaptation timesteps into a raw (T, N) rollout (`adapt_for_sampling` computes
        the advantages it needs).

        The protocol's Timestep carries s_t but not s_{t+1}; the next step's observation
        provides it, except at an episode's last step, where the final observation is not
        passed to the agent: there we bootstrap from V(s_t) instead (one step off, at one step
        in 500)."""
        steps = self._steps
        obs = np.stack([s.observation for s in steps], 1).astype(np.float32)  # (T, N, obs)
        dones = np.stack([np.logical_or(s.terminated, s.truncated) for s in steps], 1)
        next_obs = np.concatenate([obs[:, 1:], obs[:, -1:]], 1)
        next_obs[dones] = obs[dones]
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
        rollout = Rollout(
            obs=t(obs), next_obs=t(next_obs),
            raw_actions=t(np.stack([s.aux_policy_outputs["raw"] for s in steps], 1)),
            log_probs=t(np.stack([s.aux_policy_outputs["log_prob"] for s in steps], 1)),
            rewards=t(np.stack([s.reward for s in steps], 1)),
            terminated=t(np.stack([s.terminated for s in steps], 1)), dones=t(dones),
        )
        return rollout


def _obs(observations: npt.NDArray) -> torch.Tensor:
    return torch.as_tensor(observations, dtype=torch.float32)[:, None]  # (T, 1, obs)
