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


def test_gru_std_head_reads_the_hidden_state_and_is_clamped_to_its_bounds():
    """model.std_type=head: the log-std is a function of the GRU state (so it can change over a
    trial), starts near init_log_std everywhere, learns, and stays inside the bounds."""
    torch.manual_seed(0)
    policy = GRUActorCritic(45, 4, hidden_dim=8, init_log_std=-0.5, std_type="head")
    assert not hasattr(policy, "log_std")
    obs = torch.randn(3, 6, 45)
    mean, log_std, _, _ = policy(obs, policy.initial_state(3))
    assert log_std.shape == mean.shape == (3, 6, 4)
    assert torch.allclose(log_std, torch.full_like(log_std, -0.5), atol=0.1)
    assert log_std.std() > 1e-4  # not one value for all states and steps
    log_std.sum().backward()
    assert policy.log_std_head.weight.grad.abs().sum() > 0
    bounded = GRUActorCritic(45, 4, hidden_dim=8, std_type="head", log_std_min=-1.0,
                             log_std_max=0.5)
    for bias, bound in ((5.0, 0.5), (-5.0, -1.0)):
        with torch.no_grad():
            bounded.log_std_head.bias.fill_(bias)
        _, log_std, _, _ = bounded(obs, bounded.initial_state(3))
        assert torch.all(log_std == bound)
    bounded.project_()  # no parameter to project: a no-op
    with pytest.raises(ConfigError, match="model.std_type='mlp' is not one of parameter, head"):
        GRUActorCritic(45, 4, hidden_dim=8, std_type="mlp")


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
