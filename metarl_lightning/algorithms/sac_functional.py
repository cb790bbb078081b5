"""SAC's maths as pure functions (Haarnoja et al. 2018, 'Soft Actor-Critic Algorithms and
Applications', eqs. 3, 7, 18; multi-task form of Yu et al. 2019, Meta-World, MT-SAC: one
temperature per task). Shapes: N = samples, K = tasks."""

from __future__ import annotations

import torch


def soft_q_target(rewards: torch.Tensor, next_q: torch.Tensor, next_log_prob: torch.Tensor,
                  alpha: torch.Tensor, terminated: torch.Tensor, gamma: float,
                  clip: float | None = None) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha_task * log pi(a'|s')).

    `next_q` (2, N): the target critics at (s', a' ~ pi(s')); `alpha` (N,): each sample's task
    temperature. Only true termination stops the bootstrap: a time-limit truncation (Meta-World's
    500-step limit) bootstraps from the true final observation (Pardo et al. 2018).
    `clip`: clamp y to [-clip, clip] (metaworld-algorithms' max_q_value=5000 for Meta-World)."""
    soft_value = next_q.min(0).values - alpha * next_log_prob  # (N,)
    target = rewards + gamma * (1.0 - terminated) * soft_value
    return target if clip is None else target.clamp(-clip, clip)


def temperature_loss(log_alpha: torch.Tensor, task: torch.Tensor, log_prob: torch.Tensor,
                     target_entropy: float) -> torch.Tensor:
    """-log alpha_task * (log pi(a|s) + target entropy), eq. 18 with log alpha as the parameter (as
    in the authors' softlearning code). `log_alpha` (K,), `task` (N,) long, `log_prob` (N,).
    Its gradient raises alpha_task when the policy's entropy -log pi is below the target."""
    return -(log_alpha[task] * (log_prob.detach() + target_entropy)).mean()


def task_weights(log_alpha: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """K * softmax(-log alpha)[task] (N,): tasks with a low temperature (the ones being solved)
    weigh more, mean weight 1. Yu et al. 2019, MT-SAC 'task-aware loss weighting'; used by
    metaworld-algorithms' MTMHSAC (use_task_weights=True)."""
    return (torch.softmax(-log_alpha.detach(), 0) * log_alpha.numel())[task]


@torch.no_grad()
def polyak_update(target: list[torch.Tensor], source: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, in place (Lillicrap et al. 2016; SAC's tau)."""
    torch._foreach_lerp_(target, source, tau)
