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
