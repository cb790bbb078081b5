"""MT-PPO: one policy trained with PPO on every task of a multi-task (MT) benchmark at once, no
inner loop; the policy tells the tasks apart by the one-hot task id in the observation
(Meta-World's MT baselines, Yu et al. 2019; PPO, Schulman et al. 2017). With
`model=multihead_mlp` each task also gets its own output heads.

Collection is the collector's one-phase mode (`inner_loop = False`): `episodes_per_task`
episodes per task slot with the shared policy. The update is plain PPO over all T x N samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metarl_lightning.algorithms import functional as F
from metarl_lightning.algorithms.base import MetaRLModule, SharedPolicyActing
from metarl_lightning.policies.distributions import action_log_prob, saturation
from metarl_lightning.types import ActorCriticPolicy, MetaBatch


class MTPPO(SharedPolicyActing, MetaRLModule):
    name = "mt_ppo"
    positive_keys = ("episodes_per_task", "update_epochs", "num_minibatches")
    benchmark_kinds = ("mt",)
    needs_one_hot = True

    def __init__(
        self,
        policy: ActorCriticPolicy,  # ActorCritic or MultiHeadActorCritic
        optimizer: Callable[..., torch.optim.Optimizer],
        *,  # the rest: keyword-only, no defaults (conf/algorithm/<name>.yaml holds them)
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
        episodes_per_task: int,  # read by the DataModule; stored for the record
        update_epochs: int,
        num_minibatches: int,  # over the T x N samples of an iteration
        clip: float,
        vf_coef: float,
        ent_coef: float,
        entropy_bonus: str,
        max_grad_norm: float,
        gamma: float,
        gae_lambda: float,
        reward_scale: float,
        max_nonfinite_steps: int,
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler"])
        self.policy = policy

    # act / mean_action: SharedPolicyActing (one policy for every task, no state, no adaptation)

    # process_rollout: the feed-forward critic's GAE of MetaRLModule

    # --- training ----------------------------------------------------------------------------
    def update(self, batch: MetaBatch) -> dict:
        data = self.process_rollout(batch.support)  # one phase: (T, N) per field
        flat = {k: v.flatten(0, 1) for k, v in data._asdict().items()}  # (T*N, ...)
        actor = self.policy.actor

        def forward(idx: torch.Tensor):
            obs = flat["obs"][idx]
            mean, log_std = actor(obs)
            log_probs = action_log_prob(mean, log_std, flat["raw_actions"][idx],
                                        actor.action_scale, actor.squash)
            entropy = F.entropy_bonus(self.hparams.entropy_bonus, mean, log_std,
                                      actor.action_scale, actor.squash)
            return (log_probs, flat["log_probs"][idx], flat["advantages"][idx],
                    self.policy.value(obs), flat["returns"][idx], entropy)

        metrics = self._ppo_epochs(self.optimizers(), flat["obs"].shape[0], forward)
        # Sampling-time values (returns - advantages) against the returns, as in CleanRL.
        metrics["explained_variance"] = F.explained_variance(data.returns - data.advantages,
                                                             data.returns)
        with torch.no_grad():
            mean, _ = actor(flat["obs"])
            metrics["mean_action_saturation"] = saturation(mean, actor.action_scale,
                                                           actor.action_bias, actor.squash)
        return metrics
