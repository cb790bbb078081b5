"""SAC's networks (Haarnoja et al. 2018): a tanh-Gaussian actor with a state-dependent std and
twin Q critics, plain MLPs or, for MTMHSAC, a shared trunk with one output head per task.

Built from the same `model=` keys as the actor-critics (`algorithm=mt_sac` maps model=mlp /
seed_mlp to `SACActorCritic(multi_head=False)` and model=multihead_mlp to `multi_head=True`, see
MTSAC.policy_class), so one model group serves every method.
"""

from __future__ import annotations

import torch
from torch import nn

from metarl_lightning.errors import ConfigError
from metarl_lightning.policies import distributions as D
from metarl_lightning.policies.actor_critic import (
    check_log_std_bounds,
    critic_hidden_sizes,
    hidden_sizes,
    mlp,
)
from metarl_lightning.policies.multihead import MultiHeadLinear

# Clamp of the state-dependent log-std when model.log_std_min / log_std_max are null:
# softlearning's SAC (Haarnoja et al. 2018) and metaworld-algorithms'
# ContinuousActionPolicyConfig (log_std_min=-20, log_std_max=2).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Net(nn.Module):
    """x (..., in_dim) -> (..., out_dim); with `num_tasks`, one linear head per task picked by the
    one-hot task id, the last `num_tasks` entries of `obs` (MTMHSAC, Yu et al. 2019)."""

    def __init__(self, in_dim: int, sizes: list[int], out_dim: int, num_tasks: int | None, *,
                 layer_norm: bool, activation: str, out_gain: float):
        super().__init__()
        self.num_tasks = num_tasks
        if num_tasks is None:
            self.body = mlp(in_dim, sizes, out_dim, layer_norm=layer_norm, activation=activation,
                            out_gain=out_gain)
        else:
            self.body = mlp(in_dim, sizes, None, layer_norm=layer_norm, activation=activation)
            self.heads = MultiHeadLinear(sizes[-1], out_dim, num_tasks, out_gain)

    def forward(self, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return h if self.num_tasks is None else self.heads(h, obs[..., -self.num_tasks:])


class SACActor(nn.Module):
    """obs -> (mean, log_std) of the pre-squash Gaussian, the std state-dependent (a second output
    head, as in SAC); same interface and action-box buffers as policies.GaussianActor, and the
    same tanh-Gaussian maths (policies/distributions.py)."""

    squash = True  # always: SAC's entropy and log-probs are those of the squashed actions

    def __init__(self, obs_dim: int, action_dim: int, sizes: list[int], num_tasks: int | None, *,
                 layer_norm: bool, activation: str, action_low: torch.Tensor,
                 action_high: torch.Tensor, log_std_min: float = LOG_STD_MIN,
                 log_std_max: float = LOG_STD_MAX):
        super().__init__()
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.net = Net(obs_dim, sizes, 2 * action_dim, num_tasks, layer_norm=layer_norm,
                       activation=activation, out_gain=0.01)  # near-zero mean, std ~1 at start
        self.register_buffer("action_scale", (action_high - action_low) / 2)
        self.register_buffer("action_bias", (action_high + action_low) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs, obs).chunk(2, -1)  # (..., act) each
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def rsample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised (action in the box, log-prob): gradients flow into the actor."""
        mean, log_std = self(obs)
        action, _, log_prob = D.sample_tanh_gaussian(mean, log_std, self.action_scale,
                                                     self.action_bias)
        return action, log_prob


class TwinQ(nn.Module):
    """Two independent Q(s, a) networks (clipped double Q, Fujimoto et al. 2018, as in SAC)."""

    def __init__(self, obs_dim: int, action_dim: int, sizes: list[int], num_tasks: int | None, *,
                 layer_norm: bool, activation: str):
        super().__init__()
        self.qs = nn.ModuleList(
            Net(obs_dim + action_dim, sizes, 1, num_tasks, layer_norm=layer_norm,
                activation=activation, out_gain=1.0) for _ in range(2))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], -1)  # (..., obs + act)
        return torch.stack([q(x, obs).squeeze(-1) for q in self.qs])  # (2, ...)


class SACActorCritic(nn.Module):
    """Actor and twin critics, the critics of the actor's hidden sizes unless `critic_hidden_dim` /
    `critic_num_layers` say otherwise; `multi_head`: one head per task (MTMHSAC). Task
    conditioning is the one-hot id at the end of the observation (benchmark.use_one_hot)."""

    def __init__(self, obs_dim: int, action_dim: int, num_tasks: int, multi_head: bool = False,
                 hidden_dim: int = 400, num_layers: int = 3, shrink_last: bool = False,
                 layer_norm: bool = False, activation: str = "relu", init_log_std: float = 0.0,
                 action_low: float = -1.0, action_high: float = 1.0, squash: bool = True,
                 critic_hidden_dim: int | None = None, critic_num_layers: int | None = None,
                 log_std_min: float | None = None, log_std_max: float | None = None):
        super().__init__()
        del init_log_std  # the PPO models' key; SAC's std is an output of the actor
        log_std_min = LOG_STD_MIN if log_std_min is None else log_std_min
        log_std_max = LOG_STD_MAX if log_std_max is None else log_std_max
        check_log_std_bounds(log_std_min, log_std_max)
        if not squash:  # SAC's entropy and log-prob need the bounded, squashed distribution
            raise ConfigError("algorithm=mt_sac needs tanh-squashed actions; set model.squash=true")
        sizes = hidden_sizes(hidden_dim, num_layers, shrink_last)
        heads = num_tasks if multi_head else None
        self.obs_dim, self.action_dim, self.num_tasks = obs_dim, action_dim, num_tasks
        self.actor = SACActor(obs_dim, action_dim, sizes, heads, layer_norm=layer_norm,
                              activation=activation,
                              action_low=torch.full((action_dim,), float(action_low)),
                              action_high=torch.full((action_dim,), float(action_high)),
                              log_std_min=log_std_min, log_std_max=log_std_max)
        critic_sizes = critic_hidden_sizes(hidden_dim, num_layers, shrink_last,
                                           critic_hidden_dim, critic_num_layers)
        self.critic = TwinQ(obs_dim, action_dim, critic_sizes, heads, layer_norm=layer_norm,
                            activation=activation)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
