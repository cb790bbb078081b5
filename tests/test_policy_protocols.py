"""Every shipped policy provides the members its methods rely on (the Protocols of types.py)."""

from __future__ import annotations

import pytest

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
