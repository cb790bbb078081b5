"""MAML-PPO: differentiable inner-loop adaptation per task, PPO outer update on query data.

References: MAML (Finn et al. 2017); ProMP's low-variance-curvature inner objective (Rothfuss et
al. 2019); PPO (Schulman et al. 2017). Tricks from Huang et al. 2022 ("The 37 implementation
details of PPO"): advantage normalisation, global grad-norm clipping, orthogonal init.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import vmap

from metarl_lightning.algorithms import functional as F
from metarl_lightning.algorithms.base import MetaRLModule, minibatches, to_device
from metarl_lightning.policies.distributions import (
    gaussian_entropy,
    sample_action,
    saturation,
    to_action,
)
from metarl_lightning.types import ActorCriticPolicy, MetaBatch, Params, Rollout, State


class MAMLPPO(MetaRLModule):
    name = "maml_ppo"
    positive_keys = ("episodes_per_task", "inner_lr", "inner_steps", "outer_epochs",
                     "outer_minibatches")
    inner_loop = True

    def __init__(
        self,
        policy: ActorCriticPolicy,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,  # the rest: keyword-only, no defaults (conf/algorithm/<name>.yaml holds them)
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
        episodes_per_task: int,  # read by the DataModule; stored for the record
        inner_lr: float,
        inner_steps: int,
        first_order: bool,
        learn_inner_lr: bool,  # Meta-SGD (Li et al. 2017): per-parameter inner lrs
        outer_epochs: int,
        outer_minibatches: int,  # task minibatches per outer epoch (1: full batch)
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
        self.log_prob_fn = F.make_log_prob_fn(policy.actor)
        if learn_inner_lr:
            self.inner_lrs = nn.ParameterDict({
                _key(k): nn.Parameter(torch.full_like(p, inner_lr))
                for k, p in policy.actor.named_parameters()
            })

    # --- parameters -------------------------------------------------------------------------
    def meta_params(self) -> Params:
        return dict(self.policy.actor.named_parameters())

    def inner_lr(self) -> float | Params:
        if not self.hparams.learn_inner_lr:
            return self.hparams.inner_lr
        return {k: self.inner_lrs[_key(k)] for k, _ in self.policy.actor.named_parameters()}

    def adapt(self, params: Params, support: Rollout, first_order: bool) -> Params:
        """Adapted actor parameters for every task, (T, ...) each."""
        adv = F.normalize(support.advantages, dim=-1)  # per task
        return F.adapt_batched(
            self.log_prob_fn, params, support.obs, support.raw_actions, support.log_probs, adv,
            lr=self.inner_lr(), steps=self.hparams.inner_steps, first_order=first_order,
        )

    # --- MetaLearner protocol (called by the rollout collector) -------------------------------
    def sampling_params(self, num_tasks: int) -> Params:
        return {k: p.detach().expand(num_tasks, *p.shape) for k, p in self.meta_params().items()}

    def _forward(self, params: Params, obs: torch.Tensor):
        # obs (T, B, obs) -> one batched forward with each task's own parameters
        actor = self.policy.actor
        obs = obs.to(self.device)
        if all(p.stride(0) == 0 for p in params.values()):
            # Shared (pre-adaptation) parameters, expanded over tasks: a plain forward does the
            # same maths without vmap's per-call overhead (0.2 vs 1.0 ms per step, seed model).
            return F.actor_forward(actor, {k: p[0] for k, p in params.items()}, obs)
        return vmap(lambda p, o: F.actor_forward(actor, p, o))(params, obs)

    @torch.no_grad()
    def mean_action(self, params: Params, obs: torch.Tensor, state: State = None):
        mean, _ = self._forward(params, obs)
        actor = self.policy.actor
        return to_action(mean, actor.action_scale, actor.action_bias, actor.squash), state

    @torch.no_grad()
    def act(self, params: Params, obs: torch.Tensor, state: State = None):
        actor = self.policy.actor
        mean, log_std = self._forward(params, obs)
        return (*sample_action(mean, log_std, actor.action_scale, actor.action_bias,
                               actor.squash), state)

    # process_rollout: the feed-forward critic's GAE of MetaRLModule

    def adapt_for_sampling(self, params: Params, support: Rollout) -> Params:
        # Sampling needs the adapted policy only, not the outer graph: first order, detached.
        shared = {k: p[0] for k, p in params.items()}
        # raw experience: the critic's GAE first
        support = (self.process_rollout(support) if support.advantages is None
                   else to_device(support, self.device))
        with torch.enable_grad():
            adapted = self.adapt(shared, support, first_order=True)
        return {k: v.detach() for k, v in adapted.items()}

    # --- training ----------------------------------------------------------------------------
    def outer_loss(self, support: Rollout, query: Rollout,
                   tasks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """PPO-clip on the query data of the policies adapted on the support data, + value loss -
        entropy bonus, for the tasks `tasks` (all if None). Every term is a mean over equally
        sized tasks and adaptation is per task, so the mean of the losses of a split of the tasks
        into equal parts is the loss of all of them (tests/test_ppo.py checks the gradients)."""
        if tasks is not None:
            support, query = _tasks(support, tasks), _tasks(query, tasks)
        hp, actor = self.hparams, self.policy.actor
        adapted = self.adapt(self.meta_params(), support, first_order=hp.first_order)
        log_probs = vmap(self.log_prob_fn)(adapted, query.obs, query.raw_actions)  # (T, N)
        policy_loss, stats = F.ppo_clip_loss(log_probs, query.log_probs,
                                             F.normalize(query.advantages, dim=-1), hp.clip)
        values = self.policy.value(torch.cat([support.obs, query.obs], 1))
        returns = torch.cat([support.returns, query.returns], 1)
        v_loss = F.value_loss(values, returns)
        if hp.entropy_bonus == "gaussian":  # closed form: no forward pass needed
            entropy = gaussian_entropy(adapted["log_std"]).mean()
        else:  # of the adapted policies' squashed actions on the query states
            mean, log_std = vmap(lambda p, o: F.actor_forward(actor, p, o))(adapted, query.obs)
            entropy = F.entropy_bonus(hp.entropy_bonus, mean, log_std, actor.action_scale,
                                      actor.squash)
        loss = policy_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
        return loss, dict(stats, policy_loss=policy_loss, value_loss=v_loss, entropy=entropy,
                          adapted=adapted, support=support)

    def update(self, batch: MetaBatch) -> dict:
        """`outer_epochs` passes over the meta-batch, each in `outer_minibatches` random task
        minibatches (1: full batch; T tasks not divisible by it give unequal parts, as PPO's
        sample minibatches do). A minibatch of k of T tasks costs ~k/T of a full-batch step
        (adaptation is per task), so minibatches buy more gradient steps per env step at the same
        compute (MT-PPO here takes 16 x 16 per iteration). Under DDP every rank holds the same
        number of tasks, so every rank takes the same number of steps."""
        opt = self.optimizers()
        # advantages with the current critic (the batch was collected with these parameters)
        support, query = self.process_rollout(batch.support), self.process_rollout(batch.query)
        hp, actor = self.hparams, self.policy.actor
        num_tasks = query.obs.shape[0]
        metrics: dict[str, torch.Tensor] = {}
        inner = torch.zeros((), device=self.device)
        for epoch in range(hp.outer_epochs):
            # 1: the whole batch in task order (no permutation drawn from the RNG)
            parts = (minibatches(num_tasks, hp.outer_minibatches, self.device)
                     if hp.outer_minibatches > 1 else (None,))
            for i, tasks in enumerate(parts):
                loss, out = self.outer_loss(support, query, tasks)
                if epoch == 0:
                    # Support surrogate after the inner step (mean over the tasks). Before it,
                    # every ratio is 1 and the normalised advantages average 0, so the loss is
                    # 0: negative = adaptation helps.
                    sup = out["support"]  # these tasks' support data
                    share = sup.obs.shape[0] / num_tasks
                    with torch.no_grad():
                        inner = inner + share * vmap(
                            F.inner_loss, in_dims=(None, 0, 0, 0, 0, 0))(
                            self.log_prob_fn, {k: v.detach() for k, v in out["adapted"].items()},
                            sup.obs, sup.raw_actions, sup.log_probs,
                            F.normalize(sup.advantages, dim=-1)).mean()
                last = epoch == hp.outer_epochs - 1 and i == len(parts) - 1
                grad_norm = self._update(opt, loss, last=last)
                if grad_norm is None:  # non-finite: step skipped
                    continue
                if "policy_loss" not in metrics:
                    metrics.update({k: out[k] for k in ("policy_loss", "value_loss", "entropy")},
                                   grad_norm=grad_norm)
                metrics.update(approx_kl=out["approx_kl"], clip_fraction=out["clip_fraction"])
        with torch.no_grad():  # the meta-policy's mean actions on the query states
            mean, _ = actor(query.obs)
            metrics["mean_action_saturation"] = saturation(mean, actor.action_scale,
                                                           actor.action_bias, actor.squash)
            # the critic after the update, on every task's support and query states
            values = self.policy.value(torch.cat([support.obs, query.obs], 1))
            returns = torch.cat([support.returns, query.returns], 1)
        metrics.update(inner_loss=inner, explained_variance=F.explained_variance(values, returns))
        if hp.learn_inner_lr:
            metrics["inner_lr_mean"] = torch.stack(
                [v.mean() for v in self.inner_lrs.values()]).mean()
        return metrics


def _tasks(rollout: Rollout, tasks: torch.Tensor) -> Rollout:
    """The rows of `tasks` (a (k,) index) of every (T, ...) field."""
    return rollout._replace(**{k: v[tasks] for k, v in rollout._asdict().items()
                               if v is not None})


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots

