"""Plumbing shared by every method's LightningModule: manual optimisation with one Lightning step
per meta-iteration, the non-finite-update guard, iteration logging against env steps, and the
checkpoint extras (env-step counter, run config, RNG states) that make resume exact.

A method subclasses `MetaRLModule`, sets the class attributes below, and implements the
`MetaLearner` protocol of `types.py` (`act`, `mean_action`, `process_rollout`, ...) plus
`update(batch) -> metrics`; `training_step` here pulls the batch, times it, steps the scheduler
and logs. See README "Adding a method".
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch

from metarl_lightning.algorithms import functional as F
from metarl_lightning.algorithms.sampling import ActorSampler, Sampler
from metarl_lightning.data.collector import single_threaded_torch
from metarl_lightning.policies.distributions import sample_action, to_action
from metarl_lightning.runlog import per_task_success
from metarl_lightning.types import ConfigError, MetaBatch, Params, Rollout, State


class MetaRLModule(L.LightningModule):
    name: ClassVar[str] = "?"  # the conf/algorithm/<name>.yaml choice, for error messages
    inner_loop: ClassVar[bool] = False  # MetaLearner.inner_loop: support/adapt/query collection
    benchmark_kinds: ClassVar[tuple[str, ...]] = ("ml", "mt")  # which benchmarks it runs on
    recurrent_policy: ClassVar[bool] = False  # needs a recurrent policy (model=gru)
    needs_one_hot: ClassVar[bool] = False  # needs the one-hot task id (benchmark.use_one_hot)
    positive_keys: ClassVar[tuple[str, ...]] = ("episodes_per_task",)  # algorithm.* keys > 0

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """The method's own demands on the run config (its `algorithm.*` keys, or the model it
        needs), checked by config.validate before anything is built: config.py holds no
        per-method code. Override to check more than positive keys."""
        for key in cls.positive_keys:
            value = cfg.algorithm.get(key)
            if value is None or not value > 0:
                raise ConfigError(f"algorithm.{key} must be > 0, got {value}; set e.g. "
                                  f"algorithm.{key}=<positive value>")
        bonus = cfg.algorithm.get("entropy_bonus")  # the PPO methods' key
        if bonus is not None and bonus not in F.ENTROPY_BONUSES:
            raise ConfigError(f"algorithm.entropy_bonus must be one of {F.ENTROPY_BONUSES}, "
                              f"got {bonus!r}; set e.g. algorithm.entropy_bonus=squashed")

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.env_steps = 0  # saved in checkpoints
        self.run_config: dict | None = None  # the resolved run config, set by train.py
        self._nonfinite_in_a_row = 0
        self._last_step_end: float | None = None

    # --- MetaLearner defaults -------------------------------------------------------------------
    def sampling_params(self, num_tasks: int) -> Params:
        return {}  # no per-task parameters: every task runs the shared policy

    def initial_state(self, num_envs: int) -> State:
        return None  # feed-forward

    def sampler(self) -> Sampler:
        return ActorSampler(self.policy.actor)  # feed-forward actor; RL² overrides

    def adapt_for_sampling(self, params: Params, support: Rollout) -> Params:
        raise NotImplementedError(f"{type(self).__name__} has no inner loop (inner_loop=False)")

    @torch.no_grad()
    def process_rollout(self, rollout: Rollout) -> Rollout:
        """GAE with a feed-forward critic `policy.value(obs)`, bootstrapped from V(final obs) at
        time-limit truncation (see functional.gae)."""
        r = to_device(rollout, self.device)
        values, next_values = self.policy.value(r.obs), self.policy.value(r.next_obs)
        adv = F.gae(r.rewards * self.hparams.reward_scale, values, next_values, r.terminated,
                    r.dones, self.hparams.gamma, self.hparams.gae_lambda)
        return r._replace(advantages=adv, returns=adv + values)

    # --- the iteration skeleton -----------------------------------------------------------------
    def training_step(self, dataloader_iter: Iterator) -> None:
        """One meta-iteration: pull the batch, run the method's `update`, step the lr scheduler,
        log against env steps. A method implements `update` only (MT-SAC, which takes many
        batches per iteration, overrides this).

        The batch is pulled here, not passed in: with the (batch, batch_idx) signature Lightning
        prefetches the next batch before this update runs, so iteration k+1 would be collected
        with pre-update parameters (stale on-policy data) and a checkpoint would hold RNG and env
        state one batch ahead (resume could not be exact)."""
        batch, _, _ = next(dataloader_iter)
        batch = self.trainer.strategy.batch_to_device(batch)
        start = time.perf_counter()
        metrics = self.update(batch)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        self._log_iteration(batch, metrics, time.perf_counter() - start)

    def update(self, batch: MetaBatch) -> dict[str, Any]:
        """The method's gradient steps on one meta-iteration's batch (on the module's device);
        returns the metrics to log as train/<key>."""
        raise NotImplementedError(f"{type(self).__name__} implements neither update nor training_step")

    # --- one gradient step ------------------------------------------------------------------------
    def _update(self, opt: Any, loss: torch.Tensor, last: bool) -> torch.Tensor | None:
        """Backward, global grad-norm clipping (Huang et al. 2022, '37 details', item 11), step.
        Returns the grad norm, or None when the loss or the norm is non-finite (step skipped)."""
        opt.zero_grad()
        self.manual_backward(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.hparams.max_grad_norm)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            self._skip_nonfinite(loss, grad_norm)
            opt.zero_grad()
            return None
        # Lightning counts each LightningOptimizer.step() as a global step; trainer.max_steps
        # counts meta-iterations, so only the last gradient step of one steps through Lightning.
        (opt.step if last else opt.optimizer.step)()
        # model.log_std_min / log_std_max: the actor's (policies.GaussianActor) or, for the
        # recurrent policy without a separate actor, the policy's own (GRUActorCritic)
        project = getattr(getattr(self.policy, "actor", self.policy), "project_", None)
        if project is not None:
            project()
        self._nonfinite_in_a_row = 0
        return grad_norm

    def _ppo_epochs(self, opt: Any, n: int, forward: Callable[[torch.Tensor], tuple]) -> dict:
        """PPO's update (Schulman et al. 2017) for methods without an inner loop: `update_epochs`
        passes over n items (samples or whole trials) in `num_minibatches` random minibatches;
        clipped surrogate + `vf_coef` * value loss - `ent_coef` * entropy, advantages normalised
        per minibatch (Huang et al. 2022, item 7). `forward(idx)` returns the minibatch's
        (log-probs, sampling-time log-probs, advantages, values, returns, log_std).
        Metrics: losses of the first minibatch, KL and clip fraction of the last.

        Runs on one intra-op thread: these updates are many small ops (a GRU unroll is N
        (B, hidden) steps in sequence; MT-PPO's minibatches are ~2.5k x 64). Measured on the
        2-core VM with other jobs running: a GRU forward + backward over (10, 1000) trials took
        1.3 s with 1 thread and 9-19 s with 2; 32 MLP steps on 5000 samples 0.6 s vs 5-16 s.
        """
        with single_threaded_torch():
            return self._ppo_epochs_inner(opt, n, forward)

    def _ppo_epochs_inner(self, opt: Any, n: int, forward: Callable[[torch.Tensor], tuple]):
        hp = self.hparams
        metrics: dict[str, torch.Tensor] = {}
        for epoch in range(hp.update_epochs):
            batches = minibatches(n, hp.num_minibatches, self.device)
            for i, idx in enumerate(batches):
                log_probs, old_log_probs, adv, values, returns, entropy = forward(idx)
                policy_loss, stats = F.ppo_clip_loss(log_probs, old_log_probs, F.normalize(adv),
                                                     hp.clip)
                v_loss = F.value_loss(values, returns)
                loss = policy_loss + hp.vf_coef * v_loss - hp.ent_coef * entropy
                last = epoch == hp.update_epochs - 1 and i == len(batches) - 1
                grad_norm = self._update(opt, loss, last)
                if grad_norm is None:  # non-finite: step skipped
                    continue
                if "policy_loss" not in metrics:
                    metrics.update(policy_loss=policy_loss, value_loss=v_loss, entropy=entropy,
                                   grad_norm=grad_norm)
                metrics.update(approx_kl=stats["approx_kl"], clip_fraction=stats["clip_fraction"])
        return metrics

    def _skip_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_skips", float(self._nonfinite_in_a_row), batch_size=1)
        if self._nonfinite_in_a_row >= self.hparams.max_nonfinite_steps:
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) or grad norm ({grad_norm.item()}) for "
                f"{self._nonfinite_in_a_row} updates in a row; last good checkpoint is intact. "
                "Lower optimizer.lr or algorithm.inner_lr, or raise algorithm.max_nonfinite_steps"
            )

    # --- logging ----------------------------------------------------------------------------------
    def _log_iteration(self, batch: MetaBatch, metrics: dict[str, Any],
                       update_time: float) -> None:
        """`metrics` (keys without prefix) as train/*, plus env steps (the x-axis), throughput,
        update share and the collector's pre/post-adaptation returns and success."""
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
            "train/env_steps": float(self.env_steps),
            "train/lr": self.optimizers().param_groups[0]["lr"],
            "perf/update_share": update_time / max(iter_time, 1e-9),
            "perf/iteration_time": iter_time,
        })
        for k in ("return_pre", "return_post", "success_pre", "success_post"):
            log[f"train/{k}"] = batch.stats[k]
        for k in ("worker_wait_share",  # the fastest rollout worker's wait for the slowest
                  "worker_busy_seconds", "worker_env_seconds", "phase_time"):
            if k in batch.stats:
                log[f"perf/{k}"] = batch.stats[k]
        log["perf/env_steps_per_s"] = steps / max(iter_time, 1e-9)
        if world > 1:  # mean over ranks (equal task shares): one collective for all keys
            values = self.trainer.strategy.reduce(
                torch.tensor([float(v) for v in log.values()], device=self.device), reduce_op="mean")
            log = dict(zip(log, values.tolist()))
        log.update(per_task_success(self.trainer, batch.stats, self.device))
        # The loggers get env steps as their step (CSV `step` column, TensorBoard x-axis);
        # self.log only feeds callback_metrics (checkpoint monitors, sweeps) and the bar.
        for logger in self.trainer.loggers:
            logger.log_metrics(log, step=self.env_steps)
        rate = log.pop("perf/env_steps_per_s")
        self.log_dict(log, on_step=True, batch_size=1, logger=False)
        self.log("perf/env_steps_per_s", rate, prog_bar=True, batch_size=1, logger=False)
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


def to_device(rollout: Rollout, device: torch.device) -> Rollout:
    """The rollout's tensors on `device` (no copy if already there; None fields stay None)."""
    return rollout._replace(**{k: v.to(device) for k, v in rollout._asdict().items()
                               if v is not None})


class SharedPolicyActing:
    """MetaLearner `act`/`mean_action` for methods whose tasks all run one shared
    `self.policy.actor` with no recurrent state and no adaptation (MT-PPO, MT-SAC)."""

    @torch.no_grad()
    def act(self, params: Params, obs: torch.Tensor, state: State = None):
        actor = self.policy.actor
        mean, log_std = actor(obs.to(self.device))  # (T, B, act)
        return (*sample_action(mean, log_std, actor.action_scale, actor.action_bias,
                               actor.squash), state)

    @torch.no_grad()
    def mean_action(self, params: Params, obs: torch.Tensor, state: State = None):
        actor = self.policy.actor
        mean, _ = actor(obs.to(self.device))
        return to_action(mean, actor.action_scale, actor.action_bias,
                         actor.squash), state


def minibatches(n: int, num_minibatches: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A random split of range(n) into `num_minibatches` index sets (fewer if n is smaller)."""
    return torch.randperm(n).to(device).chunk(min(num_minibatches, n))


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


def cosine_with_floor(optimizer: torch.optim.Optimizer, total_steps: int, min_ratio: float = 0.1):
    """Cosine decay from the base lr to `min_ratio` of it over `total_steps` meta-iterations."""
    def factor(step: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
