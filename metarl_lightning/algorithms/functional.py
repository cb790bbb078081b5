"""Pure RL maths: GAE, PPO losses, and the MAML inner loop. No Lightning, no envs.

Time is the last dimension everywhere: (..., N).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.func import functional_call, grad, vmap

from metarl_lightning.policies.distributions import (
    action_log_prob,
    gaussian_entropy,
    squashed_entropy,
)
from metarl_lightning.types import Params


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
        terminated: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalized advantage estimation (Schulman et al. 2016) with time-limit bootstrapping.

    `next_values[t]` is V(s_{t+1}), the value of the *true* next observation, also at the last
    step of an episode cut by the time limit (Pardo et al. 2018, 'Time limits in RL'): a
    truncated step bootstraps from V(final obs) and only a terminated one does not. `dones`
    (terminated or truncated) stops the lambda-trace at episode boundaries.
    """
    not_term = 1.0 - terminated
    not_done = 1.0 - dones
    deltas = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(deltas)
    last = torch.zeros_like(deltas[..., 0])
    for t in range(deltas.shape[-1] - 1, -1, -1):
        last = deltas[..., t] + gamma * lam * not_done[..., t] * last
        adv[..., t] = last
    return adv


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None,
              eps: float = 1e-8) -> torch.Tensor:
    if dim is None:
        return (x - x.mean()) / (x.std() + eps)
    return (x - x.mean(dim, keepdim=True)) / (x.std(dim, keepdim=True) + eps)


def ppo_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                  clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), to minimise. `old_log_probs` must be
    detached: a graph through them makes the ratio identically 1 and the gradient vanish."""
    if old_log_probs.requires_grad:
        raise ValueError("old log-probs carry a graph; detach them at sampling time")
    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            # k3 estimator of KL(old || new), http://joschu.net/blog/kl-approx.html
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
        }
    return loss, stats


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    return 0.5 * (values - returns).pow(2).mean()


ENTROPY_BONUSES = ("gaussian", "squashed")


def entropy_bonus(kind: str, mean: torch.Tensor, log_std: torch.Tensor, scale: torch.Tensor,
                  squash_actions: bool) -> torch.Tensor:
    """The mean entropy a PPO loss rewards (`algorithm.entropy_bonus`). 'gaussian': the
    pre-squash Gaussian's, in closed form (the usual bonus with a state-independent std; blind to
    tanh saturation). 'squashed': the entropy of the actions the env receives, estimated at one
    reparameterised sample per state (`squashed_entropy`); for clipped (unsquashed) actions it is
    the Gaussian's. Draws from torch's global generator, whose state the checkpoints hold."""
    if kind == "gaussian" or not squash_actions:
        return gaussian_entropy(log_std).mean()
    noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
    return squashed_entropy(mean, log_std.expand_as(mean), scale, noise).mean()


def task_reward_scales(task_means: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Per-task reward multipliers (`algorithm.task_reward_norm`): task i's rewards times
    scales[i] have the mean over tasks of the tasks' mean per-step rewards as their mean, so every
    task weighs alike in batch-normalised advantages and the overall reward scale is kept.
    Meta-World rewards are >= 0; `floor` bounds the multiplier of a task that scores ~0."""
    means = task_means.clamp_min(floor)
    return means.mean() / means


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    var = target.var()
    return 1.0 - (target - pred).var() / var if var > 0 else torch.tensor(float("nan"))


# --- MAML inner loop -------------------------------------------------------------------------

LogProbFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]


def actor_forward(actor: torch.nn.Module, params: Params,
                  obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The actor's (mean, log_std) with `params` substituted. Buffers (action bounds) are read
    from the module at call time, so they follow it across `.to(device)`."""
    return functional_call(actor, {**dict(actor.named_buffers()), **params}, (obs,))


def make_log_prob_fn(actor: torch.nn.Module) -> LogProbFn:
    """(params, obs (N, obs), raw_actions (N, act)) -> log-probs (N,) via `actor_forward`.
    A partial, not a closure: modules holding it must pickle (DDP spawn sends them to ranks)."""
    return functools.partial(_log_prob, actor)


def _log_prob(actor: torch.nn.Module, params: Params, obs: torch.Tensor,
              raw_actions: torch.Tensor) -> torch.Tensor:
    mean, log_std = actor_forward(actor, params, obs)
    return action_log_prob(mean, log_std, raw_actions, actor.action_scale, actor.squash)


def inner_loss(log_prob_fn: LogProbFn, params: Params, obs: torch.Tensor,
               raw_actions: torch.Tensor, old_log_probs: torch.Tensor,
               advantages: torch.Tensor) -> torch.Tensor:
    """Inner-loop policy-gradient surrogate of one task, -mean(ratio * A).

    Its gradient at the sampling parameters is the vanilla policy gradient, and its Hessian
    keeps the score-function term that a plain -mean(log p * A) drops: the 'low variance
    curvature' objective of ProMP (Rothfuss et al. 2019, eq. 10). Advantages are normalised per
    task by the caller.
    """
    ratio = torch.exp(log_prob_fn(params, obs, raw_actions) - old_log_probs)
    return -(ratio * advantages).mean()


def adapt(log_prob_fn: LogProbFn, params: Params, obs: torch.Tensor, raw_actions: torch.Tensor,
          old_log_probs: torch.Tensor, advantages: torch.Tensor, *, lr: float | Params,
          steps: int, first_order: bool) -> Params:
    """`steps` gradient steps on one task's support data (MAML, Finn et al. 2017).

    With `first_order=False` the result stays differentiable w.r.t. `params` (second order:
    `torch.func.grad` composes with the outer autograd). With `first_order=True` the inner
    gradient is detached (FOMAML). `lr` is a float or, for Meta-SGD, a dict of per-parameter
    learning-rate tensors.
    """
    loss_fn = lambda p: inner_loss(log_prob_fn, p, obs, raw_actions, old_log_probs, advantages)
    for _ in range(steps):
        grads = grad(loss_fn)(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {
            k: p - (lr[k] if isinstance(lr, dict) else lr) * grads[k] for k, p in params.items()
        }
    return params


def adapt_batched(log_prob_fn: LogProbFn, params: Params, obs: torch.Tensor,
                  raw_actions: torch.Tensor, old_log_probs: torch.Tensor,
                  advantages: torch.Tensor, *, lr: float | Params, steps: int,
                  first_order: bool) -> Params:
    """`adapt` for every task at once: shared `params`, data with a leading (T,) dim; returns
    per-task parameters stacked along a new leading (T,) dim."""
    fn = lambda o, a, lp, adv: adapt(log_prob_fn, params, o, a, lp, adv, lr=lr, steps=steps,
                                     first_order=first_order)
    return vmap(fn)(obs, raw_actions, old_log_probs, advantages)
