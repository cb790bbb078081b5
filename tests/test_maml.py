"""The MAML meta-gradient: second order equals finite differences, first order differs,
vmapped adaptation equals a per-task loop, Meta-SGD learning rates get gradients."""

import functools

import pytest
import torch
from torch.func import vmap

from metarl_lightning.algorithms import MAMLPPO
from metarl_lightning.algorithms import functional as F
from metarl_lightning.policies import ActorCritic
from tests.conftest import algorithm_kwargs

T, N = 3, 12


def _problem(layer_norm=True, seed=0, squash=True):
    torch.manual_seed(seed)
    actor = ActorCritic(5, 2, hidden_dim=8, num_layers=2, layer_norm=layer_norm,
                        init_log_std=-0.3, squash=squash).double().actor
    lp = F.make_log_prob_fn(actor)
    g = lambda *s: torch.randn(*s, dtype=torch.float64)
    data = dict(obs=g(T, N, 5), u=g(T, N, 2), adv=g(T, N), qobs=g(T, N, 5), qu=g(T, N, 2),
                qadv=g(T, N))
    params = dict(actor.named_parameters())
    with torch.no_grad():
        data["old"] = vmap(lp, in_dims=(None, 0, 0))(params, data["obs"], data["u"])
    return lp, params, data


def _meta_objective(lp, params, d, first_order=False, steps=2):
    adapted = F.adapt_batched(lp, params, d["obs"], d["u"], d["old"], d["adv"], lr=0.1,
                              steps=steps, first_order=first_order)
    return -(vmap(lp)(adapted, d["qobs"], d["qu"]) * d["qadv"]).mean()


def _directional(grads, direction):
    return sum((grads[k] * direction[k]).sum() for k in grads).item()


@pytest.mark.parametrize("layer_norm, squash", [(True, True), (False, True), (True, False)])
def test_second_order_meta_gradient_matches_finite_differences(layer_norm, squash):
    lp, params, d = _problem(layer_norm, squash=squash)
    grads = dict(zip(params, torch.autograd.grad(_meta_objective(lp, params, d),
                                                 list(params.values()))))
    torch.manual_seed(1)
    direction = {k: torch.randn_like(v) for k, v in params.items()}
    eps = 1e-6
    with torch.no_grad():
        plus = _meta_objective(lp, {k: v + eps * direction[k] for k, v in params.items()}, d)
        minus = _meta_objective(lp, {k: v - eps * direction[k] for k, v in params.items()}, d)
    fd = ((plus - minus) / (2 * eps)).item()
    assert _directional(grads, direction) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_first_order_gradient_differs_from_second_order():
    lp, params, d = _problem()
    second = torch.autograd.grad(_meta_objective(lp, params, d), list(params.values()))
    first = torch.autograd.grad(_meta_objective(lp, params, d, first_order=True),
                                list(params.values()))
    diff = max((a - b).abs().max().item() for a, b in zip(first, second))
    assert diff > 1e-3


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_adaptation_equals_looped(first_order):
    lp, params, d = _problem()
    looped = [F.adapt(lp, params, d["obs"][t], d["u"][t], d["old"][t], d["adv"][t], lr=0.1,
                      steps=2, first_order=first_order) for t in range(T)]
    batched = F.adapt_batched(lp, params, d["obs"], d["u"], d["old"], d["adv"], lr=0.1, steps=2,
                              first_order=first_order)
    for k in params:
        torch.testing.assert_close(batched[k], torch.stack([p[k] for p in looped]))

    def loop_objective(p):
        return sum(-(lp(F.adapt(lp, p, d["obs"][t], d["u"][t], d["old"][t], d["adv"][t],
                                lr=0.1, steps=2, first_order=first_order),
                        d["qobs"][t], d["qu"][t]) * d["qadv"][t]).mean() for t in range(T)) / T

    g_loop = torch.autograd.grad(loop_objective(params), list(params.values()))
    g_vmap = torch.autograd.grad(_meta_objective(lp, params, d, first_order),
                                 list(params.values()))
    for a, b in zip(g_loop, g_vmap):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_inner_step_improves_the_inner_objective():
    lp, params, d = _problem()
    adapted = F.adapt_batched(lp, params, d["obs"], d["u"], d["old"], d["adv"], lr=0.05,
                              steps=1, first_order=True)
    loss = vmap(F.inner_loss, in_dims=(None, 0, 0, 0, 0, 0))
    before = loss(lp, {k: v.expand(T, *v.shape) for k, v in params.items()}, d["obs"], d["u"],
                  d["old"], d["adv"])
    after = loss(lp, adapted, d["obs"], d["u"], d["old"], d["adv"])
    assert (after < before).all()


def test_meta_sgd_inner_learning_rates_receive_gradients():
    policy = ActorCritic(5, 2, hidden_dim=8, num_layers=2)
    module = MAMLPPO(policy, optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
                     **algorithm_kwargs("maml_ppo", learn_inner_lr=True, inner_lr=0.1))
    torch.manual_seed(0)
    support = _rollout(module, seed=0)
    query = _rollout(module, seed=1)
    adapted = module.adapt(module.meta_params(), support, first_order=False)
    logp = vmap(module.log_prob_fn)(adapted, query.obs, query.raw_actions)
    loss, _ = F.ppo_clip_loss(logp, query.log_probs, query.advantages, 0.2)
    loss.backward()
    lrs = list(module.inner_lrs.values())
    assert len(lrs) == len(list(policy.actor.parameters()))  # one lr tensor per actor tensor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lrs)
    before = [p.detach().clone() for p in lrs]
    opt = module.configure_optimizers()  # the optimizer training uses: it holds the lrs
    opt.step()
    assert all((p - b).abs().max() > 0 for p, b in zip(lrs, before))


def _rollout(module, seed, tasks=2, steps=16):
    from metarl_lightning.types import Rollout

    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(tasks, steps, 5, generator=g)
    params = module.sampling_params(tasks)
    _, raw, logp, _ = module.act(params, obs)
    z = torch.zeros(tasks, steps)
    return Rollout(obs=obs, next_obs=obs, raw_actions=raw, log_probs=logp,
                   rewards=torch.randn(tasks, steps, generator=g), terminated=z, dones=z,
                   advantages=torch.randn(tasks, steps, generator=g), returns=z)
