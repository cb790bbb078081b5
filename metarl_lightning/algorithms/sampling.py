"""What rollout collection needs of a method, as a small picklable object: the policy module and
the act maths. The learner's copy wraps the live policy (the in-process collector); the rollout
workers (data/workers.py) get a pickled CPU copy once and load the phase's parameters into it.

Reproducibility across processes: action noise is passed in (drawn by the caller from one
torch.Generator per task slot), and the forward pass runs over a fixed group of slots (the same
group in every path: CPU matmuls are not row-independent, measured here: a row of a 5-row
forward differs in the last bits from the same row alone), so a slot's actions do not depend on
which process steps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from metarl_lightning.algorithms import functional as F
from metarl_lightning.policies.actor_critic import _ACTIVATIONS, GaussianActor, LayerNorm
from metarl_lightning.policies.distributions import sample_action
from metarl_lightning.types import Params, State

# A phase's per-step policy on numpy arrays: obs (n, obs), noise (n, act), state ->
# action (n, act), raw action (n, act), log-prob (n,), state.
StepFn = Callable[[np.ndarray, np.ndarray, State],
                  tuple[np.ndarray, np.ndarray, np.ndarray, State]]

GENERATOR_STATE_BYTES = 5056  # torch.Generator().get_state().numel() (CPU mt19937)


def sample_with_noise(mean: torch.Tensor, log_std: torch.Tensor, module: nn.Module,
                      noise: torch.Tensor):
    """(action, raw action, log-prob) from given standard-normal `noise` (same shape as `mean`),
    with `module`'s action box and squash setting."""
    return sample_action(mean, log_std, module.action_scale, module.action_bias,
                         module.squash, noise)


def slot_generators(seed: int, slots: list[int]) -> list[torch.Generator]:
    """One generator per global task slot, seeded from (run seed, slot): the slot's action noise
    is the same whichever rank, worker or process steps it."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + 7919 * slot + 17) for slot in slots]


def draw_noise(generators: list[torch.Generator], act_dim: int, steps: int = 1) -> torch.Tensor:
    """(n, steps, act) standard normals, row i from generator i. The collectors draw a whole
    phase's noise at once (one call per slot, not one per slot and step: ~3% of a phase)."""
    return torch.stack([torch.randn(steps, act_dim, generator=g) for g in generators])


def batched_sequential(net: nn.Module, params: Params, prefix: str,
                       x: torch.Tensor) -> torch.Tensor | None:
    """`net` run on x (n, b, in) with per-slot parameters (params[prefix + name]: (n, ...)) as
    batched matmuls; None if `net` is not a Sequential of Linear, LayerNorm and elementwise
    activations (callers then use vmap). Measured for MAML's query phase (5 slots, 64-64 MLP,
    one thread): 63 us per step against 645 us for `vmap(functional_call)`, same values."""
    layers = list(net.named_children()) if isinstance(net, nn.Sequential) else []
    known = (nn.Linear, LayerNorm, *_ACTIVATIONS.values())  # the layers policies/actor_critic.mlp uses
    if not layers or not all(type(m) in known for _, m in layers):
        return None
    for name, layer in layers:
        key = f"{prefix}{name}."
        if isinstance(layer, nn.Linear):
            x = torch.baddbmm(params[key + "bias"][:, None], x,
                              params[key + "weight"].transpose(1, 2))
        elif isinstance(layer, LayerNorm):  # its own elementwise forward, per-slot affine
            x = torch.func.functional_call(layer, {"weight": params[key + "weight"][:, None],
                                                   "bias": params[key + "bias"][:, None]}, (x,))
        else:
            x = layer(x)
    return x


_NP_ACTIVATIONS = {
    nn.Tanh: lambda x: np.tanh(x, out=x),
    nn.ReLU: lambda x: np.maximum(x, 0, out=x),
    nn.ELU: lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    nn.SiLU: lambda x: x / (1 + np.exp(-x)),
}
_HALF_LOG_2PI = np.float32(0.5 * math.log(2 * math.pi))
_LOG_2 = np.float32(math.log(2.0))


def numpy_actor(actor: nn.Module, params: Params | None) -> StepFn | None:
    """`ActorSampler.act` for a `GaussianActor` whose net is a Sequential of Linear, LayerNorm
    and elementwise activations, in numpy on parameters read once per phase; None for any other
    actor (callers then act in torch). Same maths as `distributions.sample_action`, float32, to
    within float rounding (tests/test_workers.py). Why: a rollout worker acts once per env step on
    a handful of rows, where torch's per-op dispatch dominates; measured for 5 MT10 slots, 2 x 64
    actor, one thread, loaded 2-core VM: 410 us per step in torch against 60 us here, while a
    Meta-World step of the 5 envs takes ~2 ms."""
    if type(actor) is not GaussianActor or not isinstance(actor.net, nn.Sequential):
        return None
    known = (nn.Linear, LayerNorm, *_NP_ACTIVATIONS)
    if not all(type(m) in known for m in actor.net):
        return None

    def get(name: str) -> np.ndarray:  # (n, ...) per slot, or the module's own (...)
        value = params[name] if params is not None else actor.get_parameter(name)
        return value.detach().cpu().numpy().astype(np.float32, copy=False)

    per_slot = params is not None
    layers = []  # ("linear", W^T, b) | ("norm", w, b, eps) | ("act", fn)
    for name, m in actor.net.named_children():
        if isinstance(m, nn.Linear):
            w, b = get(f"net.{name}.weight"), get(f"net.{name}.bias")
            wt = np.ascontiguousarray(np.swapaxes(w, -1, -2))
            layers.append(("linear", wt, b[:, None] if per_slot else b))
        elif isinstance(m, LayerNorm):
            w, b = get(f"net.{name}.weight"), get(f"net.{name}.bias")
            layers.append(("norm", w[:, None] if per_slot else w,
                           b[:, None] if per_slot else b, np.float32(m.eps)))
        else:
            layers.append(("act", _NP_ACTIVATIONS[type(m)]))
    log_std = get("log_std")  # (act,) or (n, act)
    std, inv_std = np.exp(log_std), np.exp(-log_std)
    scale = actor.action_scale.cpu().numpy()
    bias = actor.action_bias.cpu().numpy()
    squash = actor.squash
    log_scale = np.log(scale).sum()

    def step(obs: np.ndarray, noise: np.ndarray, state: State):
        x = np.asarray(obs, np.float32)
        if per_slot:
            x = x[:, None]  # (n, 1, in) @ (n, in, out)
        for layer in layers:
            if layer[0] == "linear":
                x = np.matmul(x, layer[1])
                x += layer[2]
            elif layer[0] == "norm":
                mu = x.mean(-1, keepdims=True)
                var = np.square(x - mu).mean(-1, keepdims=True)
                x = (x - mu) / np.sqrt(var + layer[3]) * layer[1] + layer[2]
            else:
                x = layer[1](x)
        mean = x[:, 0] if per_slot else x
        raw = mean + std * noise
        z = (raw - mean) * inv_std
        logp = (-0.5 * np.square(z) - log_std - _HALF_LOG_2PI).sum(-1)
        if squash:
            action = bias + scale * np.tanh(raw)
            # log|d tanh/du| = 2 (log 2 - u - softplus(-2u)), as distributions.py
            logp -= log_scale + (2.0 * (_LOG_2 - raw - np.logaddexp(0, -2.0 * raw))).sum(-1)
        else:
            action = np.clip(raw, bias - scale, bias + scale)
        return (action.astype(np.float32, copy=False), raw.astype(np.float32, copy=False),
                logp.astype(np.float32, copy=False), state)

    return step


class Sampler:
    """A policy module plus the act maths; subclasses say how `act` reads the module.

    `params`: None = the module's own parameters (the phase's shared parameters); otherwise a
    dict of per-slot parameters with a leading (n,) dim (MAML's adapted actors)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def flat_parameters(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def load_flat(self, flat: torch.Tensor) -> None:
        """Copy a `flat_parameters()` vector into the module (the worker's copy)."""
        offset = 0
        with torch.no_grad():
            for p in self.module.parameters():
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def unflatten(self, flat: torch.Tensor) -> Params:
        """(n, P) rows -> per-slot parameter dict, (n, ...) each, in named_parameters order."""
        out, offset = {}, 0
        for name, p in self.module.named_parameters():
            out[name] = flat[:, offset:offset + p.numel()].reshape(-1, *p.shape)
            offset += p.numel()
        return out

    def flatten(self, params: Params) -> torch.Tensor:
        """Per-slot parameter dict -> (n, P) rows (inverse of `unflatten`)."""
        names = [name for name, _ in self.module.named_parameters()]
        return torch.cat([params[name].detach().flatten(1) for name in names], 1)

    def initial_state(self, n: int) -> State:
        return None

    def bind(self, params: Params | None) -> StepFn:
        """The phase's per-step policy on numpy arrays (the collectors' one call per step):
        `act` on the module's device with `params`, tensors in and out."""
        device = next(self.module.parameters()).device

        def step(obs: np.ndarray, noise: np.ndarray, state: State):
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)[:, None]
            e = torch.as_tensor(noise, device=device)[:, None]
            action, raw, logp, state = self.act(params, o, state, e)
            return (action[:, 0].cpu().numpy(), raw[:, 0].cpu().numpy(),
                    logp[:, 0].cpu().numpy(), state)

        return step

    def act(self, params: Params | None, obs: torch.Tensor, state: State,
            noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, State]:
        """(n, 1, obs), noise (n, 1, act) -> action, raw action (n, 1, act), log-prob (n, 1),
        state."""
        raise NotImplementedError


class ActorSampler(Sampler):
    """Feed-forward `GaussianActor` (MAML-PPO, MT-PPO). The collectors act through `bind`: in
    numpy for a plain MLP actor, else `act` (per-slot parameters through batched matmuls or
    vmap)."""

    def bind(self, params: Params | None) -> StepFn:
        return numpy_actor(self.module, params) or super().bind(params)

    @torch.no_grad()
    def act(self, params, obs, state, noise):
        actor = self.module
        if params is None:
            mean, log_std = actor(obs)
        else:
            # GaussianActor.forward as batched matmuls; any other actor through vmap
            mean = (batched_sequential(actor.net, params, "net.", obs)
                    if type(actor) is GaussianActor else None)
            if mean is not None:
                log_std = params["log_std"][:, None].expand_as(mean)
            else:
                mean, log_std = vmap(lambda p, o: F.actor_forward(actor, p, o))(params, obs)
        return (*sample_with_noise(mean, log_std, actor, noise), state)


class RecurrentSampler(Sampler):
    """`GRUActorCritic` (RL²): one GRU step per env step; the state runs through the trial."""

    def initial_state(self, n: int) -> State:
        return self.module.initial_state(n)

    @torch.no_grad()
    def act(self, params, obs, state, noise):
        p = self.module
        state = self.initial_state(obs.shape[0]) if state is None else state
        mean, log_std, _, state = p(obs, state)
        return (*sample_with_noise(mean, log_std, p, noise), state)
