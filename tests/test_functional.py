"""GAE, returns, normalisation, PPO loss and tanh-Gaussian log-prob against hand computations."""

import math

import pytest
import torch

from metarl_lightning.algorithms import functional as F
from metarl_lightning.policies import distributions as D


def test_gae_bootstraps_at_truncation_not_at_termination():
    # Two 2-step episodes. Episode 1 truncated (time limit), episode 2 terminated.
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    v = torch.tensor([0.5, 0.6, 0.7, 0.8])
    nv = torch.tensor([0.6, 10.0, 0.8, 99.0])  # V(s_{t+1}); at t=1 the final obs of episode 1
    term = torch.tensor([0.0, 0.0, 0.0, 1.0])
    done = torch.tensor([0.0, 1.0, 0.0, 1.0])
    g, lam = 0.9, 0.8
    d1 = 2.0 + g * 10.0 - 0.6  # truncated: bootstrap from V(final obs)
    d0 = 1.0 + g * 0.6 - 0.5
    d3 = 4.0 - 0.8  # terminated: no bootstrap
    d2 = 3.0 + g * 0.8 - 0.7
    expected = torch.tensor([d0 + g * lam * d1, d1, d2 + g * lam * d3, d3])
    torch.testing.assert_close(F.gae(r, v, nv, term, done, g, lam), expected)


def test_gae_treating_truncation_as_terminal_would_differ():
    r, v = torch.ones(3), torch.zeros(3)
    nv = torch.full((3,), 5.0)
    done = torch.tensor([0.0, 0.0, 1.0])
    boot = F.gae(r, v, nv, torch.zeros(3), done, 0.99, 0.95)
    wrong = F.gae(r, v, nv, done, done, 0.99, 0.95)
    assert boot[-1].item() == pytest.approx(1 + 0.99 * 5)
    assert wrong[-1].item() == pytest.approx(1.0)


def test_gae_batched_over_leading_dims():
    torch.manual_seed(0)
    r, v, nv = torch.randn(3, 2, 7), torch.randn(3, 2, 7), torch.randn(3, 2, 7)
    term = torch.zeros(3, 2, 7)
    done = (torch.rand(3, 2, 7) < 0.3).float()
    out = F.gae(r, v, nv, term, done, 0.99, 0.95)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(
                out[i, j], F.gae(r[i, j], v[i, j], nv[i, j], term[i, j], done[i, j], 0.99, 0.95))


def test_gae_lambda_one_plus_value_is_the_return_bootstrapped_only_at_truncation():
    # V(s') = 1 at EVERY step (not only at the episode end), r = 0, gamma = 0.5, time limit at
    # t=3: the return bootstraps once, from V(final obs): [g^4, g^3, g^2, g] * 1. A version
    # that adds gamma * V(s') at every step would give [0.94, 0.88, 0.75, 0.5].
    r, v, nv = torch.zeros(4), torch.ones(4), torch.ones(4)
    done = torch.tensor([0.0, 0.0, 0.0, 1.0])
    g = 0.5
    returns = F.gae(r, v, nv, torch.zeros(4), done, g, 1.0) + v
    torch.testing.assert_close(returns, torch.tensor([0.0625, 0.125, 0.25, 0.5]))
    # terminated instead of truncated: nothing to bootstrap, every return is 0
    terminal = F.gae(r, v, nv, done, done, g, 1.0) + v
    torch.testing.assert_close(terminal, torch.zeros(4))


def test_ppo_clip_loss_by_hand():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, -2.0, 2.0])
    loss, stats = F.ppo_clip_loss(logp, old, adv, clip=0.2)
    # min(r*A, clip(r)*A): [1.2, -0.8, -2.2, 1.4]
    assert loss.item() == pytest.approx(-(1.2 - 0.8 - 2.2 + 1.4) / 4)
    assert stats["clip_fraction"].item() == pytest.approx(0.75)
    ratio = torch.exp(logp)
    assert stats["approx_kl"].item() == pytest.approx(((ratio - 1) - logp).mean().item())


def test_ppo_clip_loss_rejects_old_log_probs_with_graph():
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="detach"):
        F.ppo_clip_loss(x * 2, x * 1, torch.ones(3), 0.2)


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3), torch.randn(3) * 0.3
    scale, bias = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 1.0, -0.5])
    u = mean + log_std.exp() * torch.randn(5, 3)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(bias, scale)],
    )
    a = D.squash(u, scale, bias)
    expected = dist.log_prob(a).sum(-1)
    got = D.tanh_gaussian_log_prob(mean, log_std.expand_as(mean), u, scale)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_clipped_gaussian_actions_and_log_prob():
    """model.squash=false: the log-prob is the Gaussian's of the raw sample (torch.distributions),
    the action is the raw sample clipped to the box, the mean action the clipped mean."""
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3) * 2, torch.randn(3) * 0.3
    scale, bias = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, 1.0, -0.5])
    noise = torch.randn(5, 3)
    action, raw, lp = D.sample_action(mean, log_std.expand_as(mean), scale, bias, False, noise)
    torch.testing.assert_close(raw, mean + log_std.exp() * noise)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(raw).sum(-1)
    torch.testing.assert_close(lp, expected)
    assert ((action >= bias - scale) & (action <= bias + scale)).all()
    inside = (raw >= bias - scale) & (raw <= bias + scale)
    assert inside.any() and (~inside).any()  # the sample exercises both branches
    torch.testing.assert_close(action[inside], raw[inside])
    torch.testing.assert_close(action[~inside], (bias + scale * raw.sign()).expand_as(raw)[~inside])
    # the squashed path is unchanged by the option
    a2, raw2, lp2 = D.sample_action(mean, log_std.expand_as(mean), scale, bias, True, noise)
    torch.testing.assert_close(a2, D.squash(raw2, scale, bias))
    torch.testing.assert_close(lp2, D.tanh_gaussian_log_prob(mean, log_std.expand_as(mean), raw2,
                                                             scale))


def test_tanh_log_prob_is_finite_when_saturated():
    u = torch.tensor([[30.0, -30.0]])
    lp = D.tanh_gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), u, torch.ones(2))
    assert torch.isfinite(lp).all()


def test_gaussian_entropy_by_hand():
    log_std = torch.tensor([0.0, math.log(2.0)])
    expected = 0.5 * math.log(2 * math.pi * math.e) * 2 + math.log(2.0)
    assert D.gaussian_entropy(log_std).item() == pytest.approx(expected)


@pytest.mark.parametrize("mean,std,scale", [(0.0, 1.0, 1.0), (2.5, 1.0, 1.0), (3.0, 0.5, 2.0),
                                            (-1.0, 0.3, 1.0)])
def test_squashed_entropy_matches_the_density_of_the_actions(mean, std, scale):
    """The one-sample estimate, averaged over many samples, against -int p(a) log p(a) da on a
    grid of the action a itself, with p(a) = N(atanh(a/c); m, s) / (c (1 - (a/c)^2))."""
    a = torch.linspace(-scale, scale, 2_000_001, dtype=torch.float64)[1:-1]
    u = torch.atanh(a / scale)
    log_p = (-0.5 * ((u - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
             - torch.log(scale * (1 - (a / scale) ** 2)))
    p = torch.exp(log_p)
    reference = -torch.trapezoid(torch.where(p > 0, p * log_p, 0.0), a).item()
    n = 400_000
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = D.squashed_entropy(torch.full((n, 1), mean, dtype=torch.float64),
                             torch.full((n, 1), math.log(std), dtype=torch.float64),
                             torch.tensor([scale], dtype=torch.float64), noise)
    assert est.mean().item() == pytest.approx(reference, abs=0.01)
    if mean == 2.5:  # saturated: far below the pre-squash Gaussian's entropy (1.42)
        assert reference < D.gaussian_entropy(torch.tensor([0.0])).item() - 1.0


def test_squashed_entropy_bonus_pulls_saturated_means_back():
    """Its gradient moves a mean deep in tanh's flat region toward 0 and, for such a mean,
    lowers a large std; the Gaussian bonus does neither (no mean gradient, std always up)."""
    torch.manual_seed(0)
    mean = torch.tensor([[3.0, -3.0]]).repeat(20_000, 1).requires_grad_()
    log_std = torch.zeros(2, requires_grad=True)
    one = torch.ones(2)
    F.entropy_bonus("squashed", mean, log_std, one, squash_actions=True).backward()
    grad_mean = mean.grad.sum(0)
    assert grad_mean[0] < 0 < grad_mean[1]  # ascent moves +3 down and -3 up
    log_std_big = torch.full((2,), 1.0, requires_grad=True)
    F.entropy_bonus("squashed", mean.detach(), log_std_big, one, True).backward()
    assert (log_std_big.grad < 0).all()  # std e^1 at mean 3: more std = more saturation
    mean.grad = None
    log_std_g = torch.zeros(2, requires_grad=True)
    F.entropy_bonus("gaussian", mean, log_std_g, one, True).backward()
    assert mean.grad is None or (mean.grad == 0).all()
    assert (log_std_g.grad > 0).all()
    # clipped (unsquashed) actions: the Gaussian's, whatever the kind
    assert F.entropy_bonus("squashed", mean, log_std_g, one, False).item() == pytest.approx(
        D.gaussian_entropy(log_std_g).item())


def test_saturation_counts_mean_actions_at_the_box_edge():
    mean = torch.tensor([[0.0, 3.0, -3.0, 1.0]])  # tanh: 0, 0.995, -0.995, 0.76
    ones, zeros = torch.ones(4), torch.zeros(4)
    assert D.saturation(mean, ones, zeros, squash_actions=True).item() == 0.5
    assert D.saturation(mean, ones, zeros, squash_actions=False).item() == 0.75  # clipped: 1 too
    # in the box's units: scale 2, bias 1 -> box [-1, 3]; mean 3 is at the edge, 1 the centre
    assert D.saturation(mean, ones * 2, ones, squash_actions=False).item() == 0.5


def test_normalize_per_task():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    y = F.normalize(x, dim=-1)
    torch.testing.assert_close(y[0], y[1])
    torch.testing.assert_close(y.mean(-1), torch.zeros(2), atol=1e-6, rtol=0)


def test_task_reward_scales_give_every_task_the_mean_of_the_means():
    means = torch.tensor([1.0, 4.0, 0.0])  # the last task scores nothing: floored
    scales = F.task_reward_scales(means, floor=0.5)
    floored = torch.tensor([1.0, 4.0, 0.5])
    torch.testing.assert_close(scales * floored, floored.mean().expand(3))
    torch.testing.assert_close(scales, torch.tensor([5.5 / 3, 5.5 / 12, 5.5 / 1.5]))
