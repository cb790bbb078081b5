"""Every shipped policy provides the members its methods rely on (the Protocols of types.py)."""

from __future__ import annotations

import pytest
import torch

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


def test_log_std_bounds_are_checked_and_bound_sac_clamp():
    with pytest.raises(ConfigError, match="log_std_min=0.5 must be < model.log_std_max=0.0"):
        ActorCritic(39, 4, hidden_dim=8, num_layers=1, log_std_min=0.5, log_std_max=0.0)
    with pytest.raises(ConfigError, match="init_log_std=0.0 lies outside"):
        ActorCritic(39, 4, hidden_dim=8, num_layers=1, log_std_max=-0.5)
    with pytest.raises(ConfigError, match="init_log_std=0.0 lies outside"):
        GRUActorCritic(45, 4, hidden_dim=8, log_std_max=-0.5)
    sac = SACActorCritic(49, 4, num_tasks=10, hidden_dim=8, num_layers=1, log_std_max=-1.0)
    with torch.no_grad():  # every weight 1: the raw log-std output is far above the bound
        for p in sac.actor.net.parameters():
            p.fill_(1.0)
    _, log_std = sac.actor(torch.ones(3, 49))
    assert torch.all(log_std == -1.0)  # null would clamp at SAC's 2.0
    assert SACActorCritic(49, 4, num_tasks=10, hidden_dim=8, num_layers=1).actor.log_std_max == 2.0


@pytest.mark.parametrize("recurrent", [False, True], ids=["mlp", "gru"])
@pytest.mark.parametrize("bound", [None, 0.0])
def test_log_std_max_holds_the_log_std_against_an_entropy_bonus(bound, recurrent, tmp_path):
    """ent_coef pushes the state-independent log-std up every outer step (Adam: ~lr per step);
    with model.log_std_max the projection after each step keeps it at the bound."""
    from tests.conftest import TINY, compose_cfg
    from tests.test_methods import BASE, METHODS
    from train import train

    extra = [] if bound is None else [f"model.log_std_max={bound}"]
    # MAML-PPO's MLP actor, or RL²-PPO's GRU (its log-std is the policy's own: no actor)
    base = BASE + METHODS["rl2_ppo"] if recurrent else TINY
    _, objs = train(compose_cfg(base + ["algorithm.ent_coef=10.0", "model.init_log_std=0.0",
                                        *extra], tmp_path))
    policy = objs["module"].policy
    log_std = (policy if recurrent else policy.actor).log_std.detach()
    if bound is None:
        assert torch.all(log_std > 0.0)  # the bonus does raise it: the bounded case is a test
    else:
        assert torch.all(log_std <= bound)
