"""Shared types. Shapes in comments: T = tasks in the meta-batch, N = steps per task."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

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
    # Filled by the learner's `process_rollout` in training_step (None in collected experience)
    advantages: torch.Tensor | None = None  # (T, N) GAE
    returns: torch.Tensor | None = None  # (T, N) value targets


class MetaBatch(NamedTuple):
    """One meta-iteration's data. Inner-loop learners (MAML): support from the meta-policy, query
    from the adapted one. One-phase learners (RL², MT-PPO): `support` holds the trials (T tasks x
    `episodes_per_task` episodes) and `query` is None."""

    support: Rollout
    query: Rollout | None
    stats: dict[str, float]  # episode returns/success before and after adaptation, env steps


State = torch.Tensor | None  # per-env recurrent state, leading (E,) dim; None: feed-forward


class MetaLearner(Protocol):
    """What the rollout collector and the evaluation adapter need from an algorithm (implemented
    by the LightningModule; `algorithms/base.py` has the defaults)."""

    # True: collect support, adapt (`adapt_for_sampling`), collect query (MAML). False: one phase
    # of `episodes_per_task` episodes per task; adaptation, if any, lives in the state (RL²).
    inner_loop: bool

    def sampling_params(self, num_tasks: int) -> Params: ...

    def sampler(self):
        """The policy module + act maths as a picklable `algorithms.sampling.Sampler` over the
        live policy; rollout workers get a CPU copy of it."""
        ...

    def initial_state(self, num_envs: int) -> State:
        """State at the start of a trial, (E, ...). Called when new tasks are drawn, never at the
        episode boundaries inside a trial. None for feed-forward policies."""
        ...

    def act(self, params: Params, obs: torch.Tensor,
            state: State = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, State]:
        """(T, B, obs) -> action (T, B, act), raw action (T, B, act), log-prob (T, B), state."""
        ...

    def mean_action(self, params: Params, obs: torch.Tensor,
                    state: State = None) -> tuple[torch.Tensor, State]:
        """(T, B, obs) -> the squashed mean action (T, B, act), state."""
        ...

    def process_rollout(self, rollout: Rollout) -> Rollout:
        """Fill advantages and returns (critic + GAE), on the learner's device."""
        ...

    def adapt_for_sampling(self, params: Params, support: Rollout) -> Params:
        """Adapted per-task parameters from raw support experience (computes its advantages)."""
        ...


# --- what the methods need from a policy (`model=` builds one; build.py checks the pairing) ------
# Plain structural types: any nn.Module with these members fits, nothing to inherit.


@runtime_checkable
class GaussianActorLike(Protocol):
    """A feed-forward tanh-Gaussian actor (policies/actor_critic.GaussianActor): called with
    obs (..., obs) it gives the pre-squash mean and log-std (..., act); MAML calls it through
    `torch.func.functional_call` with adapted parameters, so it must be a pure function of them."""

    action_scale: torch.Tensor  # (act,) buffer: action = bias + scale * tanh(raw)
    action_bias: torch.Tensor
    squash: bool  # False: action = raw clipped to the box (policies/distributions.py)

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def log_prob(self, obs: torch.Tensor, raw_actions: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ActorCriticPolicy(Protocol):
    """MAML-PPO, Meta-SGD and MT-PPO: an actor (the part MAML adapts) and a state-value critic.
    policies/actor_critic.ActorCritic; policies/multihead.MultiHeadActorCritic adds `num_tasks`
    and `multi_task = True` (one head per task, picked by the one-hot id in the obs)."""

    obs_dim: int
    action_dim: int
    actor: GaussianActorLike

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., obs) -> V(obs) (...)."""
        ...

    def num_params(self) -> int: ...


@runtime_checkable
class RecurrentPolicy(Protocol):
    """RL²-PPO: a stateless recurrent actor-critic whose caller owns the state
    (policies/recurrent.GRUActorCritic, `recurrent = True`)."""

    obs_dim: int
    action_dim: int
    action_scale: torch.Tensor
    action_bias: torch.Tensor
    squash: bool

    def initial_state(self, batch: int) -> torch.Tensor: ...

    def __call__(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """obs (B, L, obs), h (B, hidden) -> mean, log-std (B, L, act), value (B, L), last h."""
        ...

    def num_params(self) -> int: ...


@runtime_checkable
class SACPolicy(Protocol):
    """MT-SAC: a tanh-Gaussian actor with reparameterised samples and twin Q critics, optionally
    one head per task (policies/sac.SACActorCritic)."""

    obs_dim: int
    action_dim: int
    num_tasks: int
    actor: torch.nn.Module  # obs -> (mean, log_std); .rsample(obs) -> (action, log-prob)
    critic: torch.nn.Module  # (obs, action) -> (2, ...) Q values

    def num_params(self) -> int: ...
