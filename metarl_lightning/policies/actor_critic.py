"""Gaussian actor-critic as plain nn.Modules (no Lightning). The actor is called functionally,
`torch.func.functional_call(actor, params, (obs,))`, so MAML can run it on adapted parameters."""

from __future__ import annotations

import math

import torch
from torch import nn

from metarl_lightning.errors import ConfigError
from metarl_lightning.policies import distributions as D

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


def hidden_sizes(hidden_dim: int, num_layers: int, shrink_last: bool) -> list[int]:
    """The seed architecture is 256 -> 256 -> 128: `shrink_last` halves the last hidden layer."""
    sizes = [hidden_dim] * num_layers
    if shrink_last and num_layers > 1:
        sizes[-1] = hidden_dim // 2
    return sizes


def critic_hidden_sizes(hidden_dim: int, num_layers: int, shrink_last: bool,
                        critic_hidden_dim: int | None, critic_num_layers: int | None) -> list[int]:
    """The critic's hidden sizes: the actor's, with `critic_hidden_dim` / `critic_num_layers`
    replacing `hidden_dim` / `num_layers` where set (None: the actor's)."""
    for name, value in (("critic_hidden_dim", critic_hidden_dim),
                        ("critic_num_layers", critic_num_layers)):
        if value is not None and value < 1:
            raise ConfigError(f"model.{name}={value}: must be >= 1, or null for the actor's")
    return hidden_sizes(hidden_dim if critic_hidden_dim is None else critic_hidden_dim,
                        num_layers if critic_num_layers is None else critic_num_layers,
                        shrink_last)


def check_log_std_bounds(low: float | None, high: float | None, init: float | None = None) -> None:
    """One-line ConfigError for model.log_std_min / log_std_max that leave no room (or that
    exclude init_log_std, where the model has one)."""
    if low is not None and high is not None and low >= high:
        raise ConfigError(f"model.log_std_min={low} must be < model.log_std_max={high}")
    if init is not None and not ((low is None or init >= low) and (high is None or init <= high)):
        raise ConfigError(f"model.init_log_std={init} lies outside [model.log_std_min, "
                          f"model.log_std_max] = [{low}, {high}]; set it inside")


@torch.no_grad()
def project_log_std_(log_std: torch.Tensor, low: float | None, high: float | None) -> None:
    """Clamp a state-independent log-std parameter into [low, high] in place (None: no bound)."""
    if low is not None or high is not None:
        log_std.clamp_(low, high)


class LayerNorm(nn.Module):
    """LayerNorm from elementary ops. torch 2.13's fused `nn.LayerNorm` gives wrong second-order
    gradients under `torch.func.vmap` (measured: up to 2e-4 off a per-task loop, 0.3% off finite
    differences on a 2-layer net; exact without LayerNorm), which would corrupt the MAML
    meta-gradient. tests/test_maml.py checks vmapped against looped adaptation."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def mlp(in_dim: int, sizes: list[int], out_dim: int | None, *, layer_norm: bool, activation: str,
        out_gain: float = 1.0) -> nn.Sequential:
    """Orthogonal init, gain sqrt(2) in hidden layers and `out_gain` at the output (the PPO
    implementation details of Huang et al. 2022, '37 details', item 2). `out_dim=None`: the
    hidden layers only (a trunk for the heads of policies/multihead.py)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for size in sizes:
        linear = nn.Linear(in_dim, size)
        nn.init.orthogonal_(linear.weight, math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if layer_norm:
            layers.append(LayerNorm(size))
        layers.append(_ACTIVATIONS[activation]())
        in_dim = size
    if out_dim is None:
        return nn.Sequential(*layers)
    head = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(head.weight, out_gain)
    nn.init.zeros_(head.bias)
    layers.append(head)
    return nn.Sequential(*layers)


class GaussianActor(nn.Module):
    """obs (..., obs_dim) -> (mean, log_std) of the raw Gaussian; log-std is a learnable,
    state-independent vector. Action box bounds are buffers (not adapted, not trained).
    `squash`: actions tanh-squashed into the box (default) or clipped (distributions.py).
    `log_std_min` / `log_std_max` (None: unbounded): bounds the optimiser keeps the log-std
    parameter in, by projecting it after every step (`project_`, called by
    MetaRLModule._update), so its gradient is never cut as a clamp in `forward` would cut it.
    MAML's inner step adapts from the projected value and may move past a bound by one step."""

    def __init__(self, obs_dim: int, action_dim: int, sizes: list[int], *, layer_norm: bool,
                 activation: str, init_log_std: float, action_low: torch.Tensor,
                 action_high: torch.Tensor, net: nn.Module | None = None, squash: bool = True,
                 log_std_min: float | None = None, log_std_max: float | None = None):
        super().__init__()
        check_log_std_bounds(log_std_min, log_std_max, init_log_std)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.squash = bool(squash)
        # `net`: another obs -> mean network (e.g. the multi-head MLP); default a plain MLP
        self.net = net if net is not None else mlp(
            obs_dim, sizes, action_dim, layer_norm=layer_norm, activation=activation,
            out_gain=0.01)  # small initial means: near-uniform actions at start
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.register_buffer("action_scale", (action_high - action_low) / 2)
        self.register_buffer("action_bias", (action_high + action_low) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)  # (..., act)
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, obs: torch.Tensor, raw_actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        return D.action_log_prob(mean, log_std, raw_actions, self.action_scale, self.squash)

    def project_(self) -> None:
        """Clamp the log-std parameter into [log_std_min, log_std_max], in place."""
        project_log_std_(self.log_std, self.log_std_min, self.log_std_max)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs, the critic of the actor's shape unless `critic_hidden_dim`
    / `critic_num_layers` say otherwise. Only the actor is adapted by MAML."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 256, num_layers: int = 3,
                 shrink_last: bool = True, layer_norm: bool = True, activation: str = "tanh",
                 init_log_std: float = 0.0, action_low: float = -1.0, action_high: float = 1.0,
                 squash: bool = True, critic_hidden_dim: int | None = None,
                 critic_num_layers: int | None = None, log_std_min: float | None = None,
                 log_std_max: float | None = None):
        super().__init__()
        sizes = hidden_sizes(hidden_dim, num_layers, shrink_last)
        critic_sizes = critic_hidden_sizes(hidden_dim, num_layers, shrink_last,
                                           critic_hidden_dim, critic_num_layers)
        low = torch.full((action_dim,), float(action_low))
        high = torch.full((action_dim,), float(action_high))
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.actor = GaussianActor(obs_dim, action_dim, sizes, layer_norm=layer_norm,
                                   activation=activation, init_log_std=init_log_std,
                                   action_low=low, action_high=high, squash=squash,
                                   log_std_min=log_std_min, log_std_max=log_std_max)
        self.critic = mlp(obs_dim, critic_sizes, 1, layer_norm=layer_norm,
                          activation=activation, out_gain=1.0)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
