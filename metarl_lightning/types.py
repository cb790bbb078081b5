"""Shared types. Shapes in comments: T = tasks in the meta-batch, N = steps per task."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from metarl_lightning.errors import ConfigError  # noqa: F401  (re-export)

Params = dict[str, torch.Tensor]  # name -> tensor; stacked params carry a leading (T,) dim


class Rollout(NamedTuple):
    """Experience of T tasks, N steps each, in time order; episodes are contiguous."""

    obs: torch.Tensor  # (T, N, obs)
    next_obs: torch.Tensor  # (T, N, obs) true next obs (final obs at episode ends)
    raw_actions: torch.Tensor  # (T, N, act) pre-tanh Gaussian samples
    log_probs: torch.Tensor  # (T, N) log-prob at sampling time, detached
    rewards: torch.Tensor  # (T, N) raw env rewards
    terminated: torch.Tensor  # (T, N) float, true termination (no bootstrap)
    dones: torch.Tensor  # (T, N) float, episode ended (terminated or truncated)
    advantages: torch.Tensor  # (T, N) GAE, filled by the learner
    returns: torch.Tensor  # (T, N) value targets, filled by the learner


class MetaBatch(NamedTuple):
    """One meta-iteration's data: support from the meta-policy, query from the adapted one."""

    support: Rollout
    query: Rollout
    stats: dict[str, float]  # episode returns/success before and after adaptation, env steps


class MetaLearner(Protocol):
    """What the rollout collector needs from an algorithm (implemented by the LightningModule)."""

    def sampling_params(self, num_tasks: int) -> Params: ...

    def act(self, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T, B, obs) -> action (T, B, act), raw action (T, B, act), log-prob (T, B)."""
        ...

    def process_rollout(self, rollout: Rollout) -> Rollout:
        """Fill advantages and returns (critic + GAE)."""
        ...

    def adapt_for_sampling(self, params: Params, support: Rollout) -> Params: ...
