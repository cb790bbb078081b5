"""Diagonal Gaussian actions, tanh-squashed into the env's action box (the default) or clipped.

Squashed (`squash=True`): a = bias + scale * tanh(u), u ~ N(mean, std). We store u (the raw
action) at sampling time, so the log-prob never needs atanh of a saturated action. Change of
variables (SAC, Haarnoja et al. 2018, appendix C):
log p(a) = log N(u) - sum_i log(scale_i * (1 - tanh(u_i)^2)).

Clipped (`squash=False`, model.squash=false): u ~ N(mean, std) is the action in env units, sent
clipped to the box; the log-prob is the Gaussian's of u (the clip is the env's business, as in
MAML-TRPO and RL² of rainx0r/metaworld-algorithms, `squash_tanh=False`). The entropy bonus then
acts on the actual action distribution instead of the pre-squash one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of the diagonal Gaussian log-density."""
    z = (u - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def log_det_tanh_jacobian(u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """sum log(scale * (1 - tanh(u)^2)), using 1 - tanh(u)^2 = 4 e^{-2u} / (1 + e^{-2u})^2."""
    return (torch.log(scale) + 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


def tanh_gaussian_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, u: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    return gaussian_log_prob(mean, log_std, u) - log_det_tanh_jacobian(u, scale)


def squash(u: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return bias + scale * torch.tanh(u)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of the pre-squash Gaussian. The squashed entropy has no closed form; the base
    entropy is the usual bonus in PPO implementations with state-independent std."""
    return (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)


def squashed_entropy(mean: torch.Tensor, log_std: torch.Tensor, scale: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """One-sample estimate of the entropy of the squashed action a = bias + scale * tanh(u),
    u = mean + std * noise (reparameterised: the gradient reaches the mean and the std).
    Change of variables: H(a) = H(u) + E[log |det da/du|]; H(u) in closed form, the Jacobian
    term at the sample. Unlike `gaussian_entropy`, it falls without bound as the mean moves into
    tanh's flat region (a near-deterministic action), so as a bonus it pulls saturated means back
    and stops the std from growing only to be squashed away."""
    u = mean + torch.exp(log_std) * noise
    return gaussian_entropy(log_std) + log_det_tanh_jacobian(u, scale)


def sample_tanh_gaussian(mean: torch.Tensor, log_std: torch.Tensor, scale: torch.Tensor,
                         bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(action in the box, raw pre-tanh sample u, log-prob of the action) for (..., act) inputs."""
    return sample_action(mean, log_std, scale, bias, squash_actions=True)


def to_action(u: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
              squash_actions: bool = True) -> torch.Tensor:
    """The env action for raw Gaussian sample(s) or mean(s) u."""
    return squash(u, scale, bias) if squash_actions else torch.clamp(u, bias - scale, bias + scale)


def action_log_prob(mean: torch.Tensor, log_std: torch.Tensor, u: torch.Tensor,
                    scale: torch.Tensor, squash_actions: bool = True) -> torch.Tensor:
    """Log-prob of the raw sample u under the actor's action distribution (see module doc)."""
    if squash_actions:
        return tanh_gaussian_log_prob(mean, log_std, u, scale)
    return gaussian_log_prob(mean, log_std, u)


def sample_action(mean: torch.Tensor, log_std: torch.Tensor, scale: torch.Tensor,
                  bias: torch.Tensor, squash_actions: bool = True,
                  noise: torch.Tensor | None = None):
    """(action in the box, raw sample u, log-prob); `noise`: given standard normals (the rollout
    workers' per-slot draws), else drawn here."""
    noise = torch.randn_like(mean) if noise is None else noise
    raw = mean + log_std.exp() * noise
    return (to_action(raw, scale, bias, squash_actions), raw,
            action_log_prob(mean, log_std, raw, scale, squash_actions))


def saturation(mean: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
               squash_actions: bool = True, level: float = 0.99) -> torch.Tensor:
    """Share of action dimensions whose mean action sits at >= `level` of the box half-width
    (squashed: |tanh(mean)| >= 0.99, i.e. |mean| >= 2.65, where a small change of the mean no
    longer moves the action; clipped: at or beyond the box edge). Near 1: a bang-bang policy."""
    a = (to_action(mean, scale, bias, squash_actions) - bias) / scale
    return (a.abs() >= level).float().mean()

