"""Old log-probs carry no graph; a PPO step on fixed data increases the surrogate."""

import functools

import torch
from torch.func import vmap

from metarl_lightning.algorithms import MAMLPPO
from metarl_lightning.algorithms import functional as F
from metarl_lightning.policies import ActorCritic
from tests.conftest import algorithm_kwargs
from tests.test_maml import _rollout


def _module():
    torch.manual_seed(0)
    return MAMLPPO(ActorCritic(5, 2, hidden_dim=16, num_layers=2),
                   optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
                   **algorithm_kwargs("maml_ppo"))


def test_sampled_log_probs_carry_no_graph():
    module = _module()
    rollout = _rollout(module, seed=0)
    assert not rollout.log_probs.requires_grad and rollout.log_probs.grad_fn is None
    adapted = module.adapt_for_sampling(module.sampling_params(2), rollout)
    assert all(not v.requires_grad for v in adapted.values())


def test_ppo_step_on_fixed_data_increases_the_surrogate():
    module = _module()
    data = _rollout(module, seed=3)
    adv = F.normalize(data.advantages, dim=-1)
    actor_params = list(module.policy.actor.parameters())
    opt = torch.optim.Adam(actor_params, lr=1e-2)

    def surrogate():
        logp = vmap(module.log_prob_fn, in_dims=(None, 0, 0))(
            module.meta_params(), data.obs, data.raw_actions)
        return F.ppo_clip_loss(logp, data.log_probs, adv, 0.2)[0]

    before = surrogate()
    # At the sampling parameters every ratio is 1, so the loss is -mean(normalised A) = 0.
    assert abs(before.item()) < 1e-5
    opt.zero_grad()
    before.backward()
    assert sum(p.grad.abs().sum() for p in actor_params) > 0  # a real policy gradient
    opt.step()
    assert surrogate().item() < before.item()  # loss = -surrogate went down


def test_task_minibatches_split_the_outer_loss_exactly():
    """algorithm.outer_minibatches: the mean of the losses of an equal split of the tasks has the
    full batch's gradient (per-task adaptation and advantage normalisation, means over equal
    task sizes), so minibatches change only how many steps an epoch takes."""
    module = _module()
    support, query = _rollout(module, seed=0, tasks=4), _rollout(module, seed=1, tasks=4)
    g = torch.Generator().manual_seed(2)
    support = support._replace(returns=torch.randn(4, 16, generator=g))
    query = query._replace(returns=torch.randn(4, 16, generator=g))
    params = list(module.parameters())

    def grads(*task_sets):
        loss = sum(module.outer_loss(support, query, torch.tensor(t))[0]
                   for t in task_sets) / len(task_sets)
        return torch.autograd.grad(loss, params, allow_unused=True)

    full, halves = grads([0, 1, 2, 3]), grads([2, 0], [3, 1])
    assert any(f is not None and f.abs().sum() > 0 for f in full)
    for f, h in zip(full, halves):
        assert (f is None) == (h is None)
        if f is not None:
            torch.testing.assert_close(h, f, rtol=1e-5, atol=1e-7)
    # not vacuous: one task's loss alone has another gradient
    alone = grads([0])
    assert any(f is not None and not torch.allclose(a, f, atol=1e-6)
               for f, a in zip(full, alone))
