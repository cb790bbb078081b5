"""Recurrent actor-critic for RL² (Duan et al. 2016, 'RL²: Fast RL via slow RL'; Wang et al. 2016,
'Learning to reinforcement learn'): a GRU reads the observation, which also carries the previous
action, reward and an episode-start flag (Meta-World's `recurrent_info_in_obs`, see
envs/benchmarks.py), and its hidden state is the policy's memory of the trial. A tanh-Gaussian
action head and a value head read the hidden state.

The module is stateless: callers own the hidden state (the collector and the evaluation adapter
reset it when a new task is drawn, never between the episodes of a trial)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from metarl_lightning.errors import ConfigError
from metarl_lightning.policies.actor_critic import check_log_std_bounds, project_log_std_

STD_TYPES = ("parameter", "head")


class GRUActorCritic(nn.Module):
    recurrent: ClassVar[bool] = True

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 128,
                 init_log_std: float = 0.0, action_low: float = -1.0, action_high: float = 1.0,
                 squash: bool = True, log_std_min: float | None = None,
                 log_std_max: float | None = None, std_type: str = "parameter"):
        super().__init__()
        if std_type not in STD_TYPES:
            raise ConfigError(f"model.std_type={std_type!r} is not one of {', '.join(STD_TYPES)}; "
                              "set model.std_type=parameter (state-independent) or head")
        # Bounds of the log-std (None: unbounded): the parameter is kept inside by projection
        # after each optimiser step (`project_`), as policies.GaussianActor does for the MLP
        # models; the head's output is clamped.
        check_log_std_bounds(log_std_min, log_std_max, init_log_std)
        self.log_std_min, self.log_std_max, self.std_type = log_std_min, log_std_max, std_type
        self.obs_dim, self.action_dim, self.hidden_dim = obs_dim, action_dim, hidden_dim
        self.squash = bool(squash)  # tanh-squashed or clipped actions (distributions.py)
        self.gru = nn.GRU(obs_dim, hidden_dim, batch_first=True)
        # Orthogonal weights, zero biases: the recurrent-PPO init of Huang et al. 2022
        # ('37 details', LSTM item 1); heads as in actor_critic.mlp (small initial means).
        # Unlike that recipe's item 3 (reset the state at every episode end), RL² resets it
        # only between trials.
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
        self.mean_head = nn.Linear(hidden_dim, action_dim)
        self.value_head = nn.Linear(hidden_dim, 1)
        for head, gain in ((self.mean_head, 0.01), (self.value_head, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)
        if std_type == "head":  # starts at init_log_std in every state, as the parameter does
            self.log_std_head = nn.Linear(hidden_dim, action_dim)
            nn.init.orthogonal_(self.log_std_head.weight, 0.01)
            nn.init.constant_(self.log_std_head.bias, float(init_log_std))
        else:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        low = torch.full((action_dim,), float(action_low))
        high = torch.full((action_dim,), float(action_high))
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden_dim, device=self.mean_head.weight.device)  # (B, hidden)

    def forward(self, obs: torch.Tensor, h: torch.Tensor):
        """obs (B, L, obs), h (B, hidden) -> mean (B, L, act), log_std (B, L, act), value (B, L),
        h after the last step (B, hidden). L=1 per env step; L = a whole trial in the update."""
        out, h_last = self.gru(obs, h.unsqueeze(0).contiguous())  # (B, L, hidden), (1, B, hidden)
        mean = self.mean_head(out)
        if self.std_type == "head":
            log_std = self.log_std_head(out)
            if self.log_std_min is not None or self.log_std_max is not None:
                log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        else:
            log_std = self.log_std.expand_as(mean)
        return mean, log_std, self.value_head(out).squeeze(-1), h_last[0]

    def project_(self) -> None:
        """Clamp the log-std parameter into [log_std_min, log_std_max], in place (the head's
        output is clamped in `forward` instead)."""
        if self.std_type == "parameter":
            project_log_std_(self.log_std, self.log_std_min, self.log_std_max)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

