"""MAML-PPO: differentiable inner-loop adaptation per task, PPO outer update on query data.

References: MAML (Finn et al. 2017); ProMP's low-variance-curvature inner objective (Rothfuss et
al. 2019); PPO (Schulman et al. 2017). Tricks from Huang et al. 2022 ("The 37 implementation
details of PPO"): advantage normalisation, global grad-norm clipping, orthogonal init.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.func import vmap

from metarl_lightning.algorithms import functional as F
from metarl_lightning.policies import ActorCritic
from metarl_lightning.policies.distributions import gaussian_entropy, squash, tanh_gaussian_log_prob
from metarl_lightning.types import MetaBatch, Params, Rollout


class MAMLPPO(L.LightningModule):
    def __init__(
        self,
        policy: ActorCritic,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        episodes_per_task: int = 1,  # read by the DataModule; stored for the record
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        first_order: bool = False,
        learn_inner_lr: bool = False,  # Meta-SGD (Li et al. 2017): per-parameter inner lrs
        outer_epochs: int = 8,
        clip: float = 0.2,
        vf_coef: float = 0.5,
        ent_coef: float = 0.01,
        max_grad_norm: float = 0.5,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        reward_scale: float = 0.01,
        max_nonfinite_steps: int = 5,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler"])
        self.policy = policy
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.log_prob_fn = F.make_log_prob_fn(policy.actor)
        if learn_inner_lr:
            self.inner_lrs = nn.ParameterDict({
                _key(k): nn.Parameter(torch.full_like(p, inner_lr))
                for k, p in policy.actor.named_parameters()
            })
        self.env_steps = 0  # saved in checkpoints
        self.run_config: dict | None = None  # the resolved run config, set by train.py
        self._nonfinite_in_a_row = 0
        self._last_step_end: float | None = None

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
    def mean_action(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self._forward(params, obs)
        return squash(mean, self.policy.actor.action_scale, self.policy.actor.action_bias)

    @torch.no_grad()
    def act(self, params: Params, obs: torch.Tensor):
        actor = self.policy.actor
        mean, log_std = self._forward(params, obs)
        raw = mean + log_std.exp() * torch.randn_like(mean)
        logp = tanh_gaussian_log_prob(mean, log_std, raw, actor.action_scale)
        return squash(raw, actor.action_scale, actor.action_bias), raw, logp

    @torch.no_grad()
    def process_rollout(self, rollout: Rollout) -> Rollout:
        r = rollout._replace(**{k: v.to(self.device) for k, v in rollout._asdict().items()})
        values, next_values = self.policy.value(r.obs), self.policy.value(r.next_obs)
        adv = F.gae(r.rewards * self.hparams.reward_scale, values, next_values, r.terminated,
                    r.dones, self.hparams.gamma, self.hparams.gae_lambda)
        return rollout._replace(advantages=adv.cpu(), returns=(adv + values).cpu())

    def adapt_for_sampling(self, params: Params, support: Rollout) -> Params:
        # Sampling needs the adapted policy only, not the outer graph: first order, detached.
        shared = {k: p[0] for k, p in params.items()}
        support = support._replace(**{k: v.to(self.device) for k, v in support._asdict().items()})
        with torch.enable_grad():
            adapted = self.adapt(shared, support, first_order=True)
        return {k: v.detach() for k, v in adapted.items()}

    # --- training ----------------------------------------------------------------------------
    def training_step(self, dataloader_iter: Iterator) -> None:
        # The batch is pulled here, not passed in: with the (batch, batch_idx) signature
        # Lightning prefetches the next batch before this update runs, so iteration k+1 would be
        # collected with pre-update parameters (stale on-policy data) and a checkpoint would hold
        # RNG and env state one batch ahead (resume could not be exact).
        batch, _, _ = next(dataloader_iter)
        batch = self.trainer.strategy.batch_to_device(batch)
        start = time.perf_counter()
        opt, sched = self.optimizers(), self.lr_schedulers()
        support, query = batch.support, batch.query
        q_adv = F.normalize(query.advantages, dim=-1)
        returns = torch.cat([support.returns, query.returns], 1)
        all_obs = torch.cat([support.obs, query.obs], 1)
        hp = self.hparams
        metrics: dict[str, torch.Tensor] = {}
        for epoch in range(hp.outer_epochs):
            adapted = self.adapt(self.meta_params(), support, first_order=hp.first_order)
            if epoch == 0:
                # Support surrogate after the inner step. Before it, every ratio is 1 and the
                # normalised advantages average 0, so the loss is 0: negative = adaptation helps.
                with torch.no_grad():
                    inner = vmap(F.inner_loss, in_dims=(None, 0, 0, 0, 0, 0))(
                        self.log_prob_fn, {k: v.detach() for k, v in adapted.items()},
                        support.obs, support.raw_actions, support.log_probs,
                        F.normalize(support.advantages, dim=-1)).mean()
            log_probs = vmap(self.log_prob_fn)(adapted, query.obs, query.raw_actions)  # (T, N)
            policy_loss, stats = F.ppo_clip_loss(log_probs, query.log_probs, q_adv, hp.clip)
            values = self.policy.value(all_obs)
            v_loss = F.value_loss(values, returns)
            entropy = gaussian_entropy(adapted["log_std"]).mean()
            loss = policy_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
            opt.zero_grad()
            self.manual_backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), hp.max_grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                self._skip_nonfinite(loss, grad_norm)
                opt.zero_grad()
                continue
            # Lightning counts each LightningOptimizer.step() as a global step; trainer.max_steps
            # counts meta-iterations, so only the last outer epoch steps through Lightning.
            (opt.step if epoch == hp.outer_epochs - 1 else opt.optimizer.step)()
            self._nonfinite_in_a_row = 0
            if epoch == 0:
                metrics.update(policy_loss=policy_loss, value_loss=v_loss, entropy=entropy,
                               grad_norm=grad_norm)
            metrics.update(approx_kl=stats["approx_kl"], clip_fraction=stats["clip_fraction"])
        if sched is not None:
            sched.step()
        self._log_iteration(batch, metrics, inner, values, returns, time.perf_counter() - start)

    def _skip_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_skips", float(self._nonfinite_in_a_row), batch_size=1)
        if self._nonfinite_in_a_row >= self.hparams.max_nonfinite_steps:
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) or grad norm ({grad_norm.item()}) for "
                f"{self._nonfinite_in_a_row} updates in a row; last good checkpoint is intact. "
                "Lower optimizer.lr or algorithm.inner_lr, or raise algorithm.max_nonfinite_steps"
            )

    def _log_iteration(self, batch: MetaBatch, metrics: dict, inner: torch.Tensor,
                       values: torch.Tensor, returns: torch.Tensor, update_time: float) -> None:
        now = time.perf_counter()
        world = self.trainer.world_size  # DDP: every rank steps an equal share of the tasks
        steps = batch.stats["env_steps"] * world
        self.env_steps += int(steps)
        # Wall time of the whole iteration: collection (before this step) + update.
        iter_time = (now - self._last_step_end if self._last_step_end is not None
                     else batch.stats["collect_time"] + update_time)
        self._last_step_end = now
        log = {f"train/{k}": v for k, v in metrics.items()}
        log.update({
            "train/inner_loss": inner,
            "train/explained_variance": F.explained_variance(values.detach(), returns),
            "train/env_steps": float(self.env_steps),
            "train/lr": self.optimizers().param_groups[0]["lr"],
            "perf/update_share": update_time / max(iter_time, 1e-9),
            "perf/iteration_time": iter_time,
        })
        for k in ("return_pre", "return_post", "success_pre", "success_post"):
            log[f"train/{k}"] = batch.stats[k]
        if self.hparams.learn_inner_lr:
            log["train/inner_lr_mean"] = torch.stack(
                [v.mean() for v in self.inner_lrs.values()]).mean()
        log["perf/env_steps_per_s"] = steps / max(iter_time, 1e-9)
        if world > 1:  # mean over ranks (equal task shares): one collective for all keys
            values = self.trainer.strategy.reduce(
                torch.tensor([float(v) for v in log.values()], device=self.device), reduce_op="mean")
            log = dict(zip(log, values.tolist()))
        rate = log.pop("perf/env_steps_per_s")
        self.log_dict(log, on_step=True, batch_size=1)
        self.log("perf/env_steps_per_s", rate, prog_bar=True, batch_size=1)
        self.log("success", log["train/success_post"], prog_bar=True, logger=False,
                 batch_size=1)

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.scheduler_factory(opt)}

    # --- checkpoint extras --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["env_steps"] = self.env_steps
        checkpoint["run_config"] = self.run_config
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.env_steps = int(checkpoint.get("env_steps", 0))
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])


def rng_states() -> dict:
    """python, numpy and torch RNG states as plain containers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_states(states: dict) -> None:
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


def cosine_with_floor(optimizer: torch.optim.Optimizer, total_steps: int, min_ratio: float = 0.1):
    """Cosine decay from the base lr to `min_ratio` of it over `total_steps` meta-iterations."""
    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
