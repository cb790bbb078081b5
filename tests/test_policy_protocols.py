"""Every shipped policy provides the members its methods rely on (the Protocols of types.py)."""

from __future__ import annotations

import pytest

from metarl_lightning.errors import ConfigError
from metarl_lightning.policies import ActorCritic, GRUActorCritic
from metarl_lightning.policies.multihead import MultiHeadActorCritic
from metarl_lightning.policies.sac import SACActorCritic
from metarl_lightning.types import ActorCriticPolicy, GaussianActorLike, RecurrentPolicy, SACPolicy


@pytest.mark.parametrize("policy, protocol", [
    (ActorCritic(39, 4, hidden_dim=8, num_layers=1), ActorCriticPolicy),
    (MultiHeadActorCritic(49, 4, num_tasks=10, hidden_dim=8, num_layers=1), ActorCriticPolicy),
    (GRUActorCritic(44, 4, hidden_dim=8), RecurrentPolicy),
    (SACActorCritic(49, 4, num_tasks=10, multi_head=True, hidden_dim=8, num_layers=1), SACPolicy),
])
def test_shipped_policies_fit_their_protocols(policy, protocol):
    assert isinstance(policy, protocol)
    if protocol is ActorCriticPolicy:
        assert isinstance(policy.actor, GaussianActorLike)
    # the checks can fail: a policy lacking a member is not an instance
    for other in {ActorCriticPolicy, RecurrentPolicy} - {protocol}:
        assert not isinstance(policy, other)


@pytest.mark.parametrize("make", [
    lambda **kw: ActorCritic(39, 4, hidden_dim=16, num_layers=3, shrink_last=False, **kw),
    lambda **kw: MultiHeadActorCritic(49, 4, num_tasks=10, hidden_dim=16, num_layers=3,
                                      shrink_last=False, **kw),
    lambda **kw: SACActorCritic(49, 4, num_tasks=10, hidden_dim=16, num_layers=3, **kw),
])
def test_critic_size_keys_shape_the_critic_only(make):
    def widths(net):  # out_features of every Linear-like layer with a weight matrix
        return [p.shape[-2] for n, p in net.named_parameters()
                if n.endswith("weight") and p.dim() >= 2]

    same, small = make(), make(critic_hidden_dim=8, critic_num_layers=2)
    assert widths(small.actor) == widths(same.actor)  # the actor keeps the model's size
    assert widths(same.critic) != widths(small.critic)
    assert max(widths(small.critic)) == 8 and len(widths(small.critic)) < len(widths(same.critic))
    assert max(widths(same.critic)) == 16  # null: the actor's size
    with pytest.raises(ConfigError, match="critic_num_layers=0"):
        make(critic_num_layers=0)
