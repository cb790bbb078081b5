"""Multi-task SAC: one SAC agent (Haarnoja et al. 2018, automatic temperature) on every task of an
MT benchmark, conditioned on the one-hot task id, with one learnable temperature per task
(Yu et al. 2019, Meta-World's MT-SAC). With `model=multihead_mlp` the actor and both critics get
one output head per task: MTMHSAC, Meta-World+'s reference MT baseline (McLean et al. 2025,
rainx0r/metaworld-algorithms, whose MTSACConfig/OffPolicyTrainingConfig give the defaults below).

Data: data/offpolicy.py steps the envs with `explore`, fills this module's replay buffer and
yields a task-balanced batch per gradient step. One Lightning step (an "iteration", what
trainer.max_steps and the callbacks' intervals count) is `steps_per_iteration` gradient steps,
by default 500: one episode per task slot at utd=1, as one MT-PPO iteration; budgets are best
set in env steps (`max_env_steps`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from metarl_lightning.algorithms import sac_functional as F
from metarl_lightning.algorithms.base import MetaRLModule, SharedPolicyActing
from metarl_lightning.data.collector import single_threaded_torch
from metarl_lightning.data.offpolicy import ReplayBatch, TaskReplayBuffer
from metarl_lightning.errors import ConfigError
from metarl_lightning.policies.sac import SACActorCritic
from metarl_lightning.types import SACPolicy


class MTSAC(SharedPolicyActing, MetaRLModule):
    name = "mt_sac"
    benchmark_kinds = ("mt",)
    needs_one_hot = True
    off_policy = True  # the DataModule streams replay batches (data/offpolicy.py)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Called by config.validate before anything is built."""
        check_keys(cfg.algorithm)
        if not cfg.model.get("squash", True):  # entropy and log-probs of the bounded actions
            raise ConfigError("algorithm=mt_sac needs tanh-squashed actions; set model.squash=true")

    @staticmethod
    def policy_class(model_target: str) -> tuple[type, dict]:
        """SAC's networks for a `model=` choice: (class, extra kwargs). See build.build_module."""
        if model_target.endswith("MultiHeadActorCritic"):
            return SACActorCritic, {"multi_head": True}
        if model_target.endswith(".ActorCritic"):
            return SACActorCritic, {"multi_head": False}
        raise ConfigError(f"algorithm=mt_sac builds its networks from model=mlp, seed_mlp or "
                          f"multihead_mlp, not {model_target}; use model=multihead_mlp (MTMHSAC)")

    def __init__(
        self,
        policy: SACPolicy,  # policies/sac.SACActorCritic
        optimizer: Callable[..., torch.optim.Optimizer],
        *,  # the rest: keyword-only, no defaults (conf/algorithm/<name>.yaml holds them)
        scheduler: Any,  # not supported: SAC runs at constant learning rates
        episodes_per_task: int,  # train.py passes it to the DataModule; unused off-policy
        steps_per_iteration: int,
        actor_lr: float | None,  # None: optimizer.lr
        critic_lr: float | None,
        alpha_lr: float | None,
        batch_size_per_task: int,
        utd: float,
        warmup_steps: int,
        buffer_capacity: int,
        checkpoint_buffer: bool,
        gamma: float,
        tau: float,
        initial_alpha: float,
        reward_scale: float,
        q_target_clip: float | None,
        task_weights: bool,
        max_nonfinite_steps: int,
    ):
        super().__init__(optimizer, None)
        self.save_hyperparameters(ignore=["policy", "optimizer"])
        check_keys(self.hparams)
        self.policy = policy
        self.target_critic = copy.deepcopy(policy.critic).requires_grad_(False)
        k = policy.num_tasks
        self.log_alpha = nn.Parameter(torch.full((k,), float(initial_alpha)).log())  # per task
        self.target_entropy = -float(policy.action_dim)  # -|A| (Haarnoja et al. 2018b, sec. 5)
        # Saved in checkpoints (on_save_checkpoint); the stream advances them.
        self.vector_steps, self.update_debt = 0, 0.0
        self.learning_starts = warmup_steps  # vector steps before the first update
        self.replay: TaskReplayBuffer | None = None
        self._pending_replay: dict | None = None

    # --- data path: called by data/offpolicy.py -----------------------------------------------
    def replay_buffer(self, num_slots: int, obs_dim: int) -> TaskReplayBuffer:
        if self.replay is None:
            capacity = max(1, self.hparams.buffer_capacity // num_slots)  # per slot
            self.replay = TaskReplayBuffer(num_slots, capacity, obs_dim, self.policy.action_dim)
            if self._pending_replay is not None:  # restored from a checkpoint
                self.replay.load_state_dict(self._pending_replay)
                self._pending_replay = None
        return self.replay

    def batch_per_slot(self, num_slots: int) -> int:
        """Transitions drawn from each task slot: batch_size_per_task per task class (slots of one
        class share its batch)."""
        return max(1, self.hparams.batch_size_per_task * self.policy.num_tasks // num_slots)

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """(S, obs) -> (S, act): uniform in the action box during the warm-up, else a sample."""
        actor = self.policy.actor
        if self.vector_steps < self.hparams.warmup_steps:
            u = torch.rand(obs.shape[0], self.policy.action_dim) * 2 - 1  # CPU RNG (resumable)
            return actor.action_bias.cpu() + actor.action_scale.cpu() * u
        return self.act({}, obs[:, None])[0][:, 0].cpu()

    # act / mean_action: SharedPolicyActing (one policy for every task, no state, no adaptation)

    def process_rollout(self, rollout):
        return rollout  # never called with an inner loop off; nothing to fill

    # --- training -------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp, lr = self.hparams, self.optimizer_factory.keywords.get("lr")
        return [self.optimizer_factory(self.policy.actor.parameters(), lr=hp.actor_lr or lr),
                self.optimizer_factory(self.policy.critic.parameters(), lr=hp.critic_lr or lr),
                self.optimizer_factory([self.log_alpha], lr=hp.alpha_lr or lr)]

    def training_step(self, dataloader_iter: Iterator) -> None:
        """One iteration: `steps_per_iteration` times (step the envs, one gradient step). Each
        batch is pulled right before its update, so the envs always act with current weights."""
        env_steps, env_wait, update_time, metrics, stats = 0.0, 0.0, 0.0, {}, {}
        n = self.hparams.steps_per_iteration
        # DDP: each loss reaches only some parameters (the critic's none of the actor's), which
        # DDP's reducer refuses; its sync is switched off and _step averages the gradients.
        ddp = self.trainer.strategy.model
        no_sync = ddp.no_sync() if isinstance(ddp, DistributedDataParallel) else contextlib.nullcontext()
        with no_sync:
            for i in range(n):
                batch, _, _ = next(dataloader_iter)
                batch = self.trainer.strategy.batch_to_device(batch)
                start = time.perf_counter()
                # While the envs step (data.overlap) the update keeps to one core and the env
                # workers get the other; otherwise it takes torch's intra-op threads (all cores;
                # Lightning's CPU DDP splits them between ranks). MT10 CPU recipe, idle 2-core
                # VM, update alone: 22 ms per gradient step on 2 threads, 29 ms on 1; overlapped,
                # 1 and 2 threads gave the same env-steps/s (281-332 vs 283-313).
                with (single_threaded_torch() if self.device.type == "cpu"
                      and batch.stats["overlapped"] else contextlib.nullcontext()):
                    metrics = self._sac_update(batch, last=i == n - 1) or metrics
                update_time += time.perf_counter() - start
                env_steps, stats = env_steps + batch.stats["env_steps"], batch.stats
                env_wait += batch.stats["env_wait"]
        self._log_step({**stats, "env_steps": env_steps, "env_wait": env_wait}, metrics,
                       update_time)

    def _sac_update(self, batch: ReplayBatch, last: bool) -> dict[str, torch.Tensor]:
        hp = self.hparams
        actor_opt, critic_opt, alpha_opt = self.optimizers()
        obs, next_obs = batch.obs.flatten(0, 1), batch.next_obs.flatten(0, 1)  # (N, obs)
        actions = batch.actions.flatten(0, 1)
        rewards, terminated = batch.rewards.flatten() * hp.reward_scale, batch.terminated.flatten()
        task = obs[:, -self.policy.num_tasks:].argmax(-1)  # (N,) from the one-hot id
        alpha = self.log_alpha.detach().exp()[task]  # (N,) each sample's task temperature
        weights = (F.task_weights(self.log_alpha, task) if hp.task_weights
                   else torch.ones_like(alpha))

        # Critic: regress both Q's on the soft Bellman target (eqs. 5-6 of Haarnoja et al. 2018b).
        with torch.no_grad():
            next_action, next_log_prob = self.policy.actor.rsample(next_obs)
            target = F.soft_q_target(rewards, self.target_critic(next_obs, next_action),
                                     next_log_prob, alpha, terminated, hp.gamma, hp.q_target_clip)
        q = self.policy.critic(obs, actions)  # (2, N)
        critic_loss = (weights * (q - target).pow(2)).mean(1).sum() * 0.5  # SB3's 0.5 * sum MSE
        if not self._step((critic_opt,), critic_loss, last=False):
            return {}
        F.polyak_update(list(self.target_critic.parameters()),
                        list(self.policy.critic.parameters()), hp.tau)

        actor_loss, alpha_loss, log_prob = self.actor_losses(obs, task, alpha, weights)
        # One backward for both: each optimiser gets exactly its own loss's gradient
        # (tests/test_mt_sac.py), for one autograd pass and one round of Lightning's hooks.
        if not self._step((actor_opt, alpha_opt), actor_loss + alpha_loss, last=last):
            return {}
        per_task = self.log_alpha.detach().exp()
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                "alpha_loss": alpha_loss.detach(), "q_mean": q.detach().mean(),
                "entropy": -log_prob.detach().mean(), "alpha_mean": per_task.mean(),
                "alpha_min": per_task.min(), "alpha_max": per_task.max()}

    def actor_losses(self, obs: torch.Tensor, task: torch.Tensor, alpha: torch.Tensor,
                     weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(actor loss, temperature loss, log pi). The actor minimises alpha log pi - min Q over
        reparameterised actions (eq. 7), with `alpha` and `weights` detached; each task's
        temperature moves toward entropy -|A| (eq. 18), with log pi detached. So the actor loss
        has no gradient in log_alpha and the temperature loss none in the actor."""
        action, log_prob = self.policy.actor.rsample(obs)
        # The critics only pass dQ/da back to the actor: frozen, the backward skips their weight
        # gradients (which the next critic step would zero), ~10% of a gradient step's matmuls.
        with frozen(self.policy.critic):
            q_pi = self.policy.critic(obs, action).min(0).values
        actor_loss = (weights * (alpha * log_prob - q_pi)).mean()
        alpha_loss = F.temperature_loss(self.log_alpha, task, log_prob, self.target_entropy)
        return actor_loss, alpha_loss, log_prob

    def _step(self, opts: tuple, loss: torch.Tensor, last: bool) -> bool:
        """Backward and step the optimisers of `loss`'s parameters (no gradient clipping:
        metaworld-algorithms' SAC has max_grad_norm=None); a non-finite loss skips the rest of
        the update. Lightning counts a LightningOptimizer.step() as a global step, so only the
        iteration's last step goes through it: trainer.global_step counts iterations."""
        for opt in opts:
            opt.zero_grad()
        if not torch.isfinite(loss):
            self._skip_nonfinite(loss, loss)
            return False
        self.manual_backward(loss)
        if self.trainer.world_size > 1:
            _average_gradients([p for opt in opts for g in opt.param_groups for p in g["params"]
                                if p.grad is not None], self.trainer.world_size)
        for i, opt in enumerate(opts):
            (opt.step if last and i == len(opts) - 1 else opt.optimizer.step)()
        self._nonfinite_in_a_row = 0
        return True

    def _log_step(self, stats: dict[str, float], metrics: dict[str, Any],
                  update_time: float) -> None:
        now = time.perf_counter()
        steps = stats["env_steps"] * self.trainer.world_size
        self.env_steps += int(steps)
        iter_time = (now - self._last_step_end if self._last_step_end is not None
                     else stats["collect_time"] + update_time)
        self._last_step_end = now
        log = {f"train/{k}": float(v) for k, v in metrics.items()}
        # success_post/return_post: the keys best_checkpoint and the other methods' curves use
        grad_steps = self.hparams.steps_per_iteration
        log.update({"train/env_steps": float(self.env_steps),
                    "train/return_post": stats["return"], "train/success_post": stats["success"],
                    "train/buffer_size": float(self.replay.size if self.replay else 0),
                    "perf/update_share": update_time / max(iter_time, 1e-9),
                    # time blocked on the envs (the rest: acting, storing, sampling, logging)
                    "perf/env_wait_share": stats["env_wait"] / max(iter_time, 1e-9),
                    "perf/gradient_steps_per_s": grad_steps / max(iter_time, 1e-9)})
        self.log_dict(log, on_step=True, batch_size=1)
        self.log("perf/env_steps_per_s", steps / max(iter_time, 1e-9), prog_bar=True,
                 batch_size=1)
        self.log("success", stats["success"], prog_bar=True, logger=False, batch_size=1)

    # --- checkpoint: counters always, the buffer behind algorithm.checkpoint_buffer -----------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["offpolicy"] = {"vector_steps": self.vector_steps,
                                   "update_debt": self.update_debt}
        if self.hparams.checkpoint_buffer and self.replay is not None:
            checkpoint["offpolicy"]["replay"] = self.replay.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("offpolicy", {})
        self.vector_steps = int(state.get("vector_steps", 0))
        self.update_debt = float(state.get("update_debt", 0.0))
        if "replay" in state:
            self._pending_replay, self.replay = state["replay"], None
        else:
            # Without the buffer it refills from empty: updates wait `warmup_steps` vector steps
            # again, collected by the current actor (explore samples uniformly only in the run's
            # first warmup_steps). The run then differs from an uninterrupted one.
            self.replay = None
            self.learning_starts = self.vector_steps + self.hparams.warmup_steps


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """`module`'s parameters leave the autograd graph inside (their requires_grad put back)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _average_gradients(params: list[torch.Tensor], world_size: int) -> None:
    """Mean of the ranks' gradients, in place: one all-reduce of the flattened gradients."""
    flat = torch.cat([p.grad.flatten() for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def check_keys(hp: Any) -> None:
    """mt_sac's own keys (config.validate checks only the shared ones), via MTSAC.check_config
    and again in __init__."""
    if hp.get("scheduler") is not None:
        raise ConfigError("algorithm=mt_sac runs at constant learning rates; set "
                          "algorithm.scheduler=null")
    positive = ("steps_per_iteration", "batch_size_per_task", "utd", "buffer_capacity", "tau",
                "gamma", "initial_alpha", "reward_scale")
    for key in positive:
        if not hp[key] > 0:
            raise ConfigError(f"algorithm.{key} must be > 0, got {hp[key]}; set e.g. "
                              f"algorithm.{key}=<positive value>")
    if hp.tau > 1 or hp.gamma > 1:
        raise ConfigError(f"algorithm.tau and algorithm.gamma must be <= 1, got tau={hp.tau}, "
                          f"gamma={hp.gamma}")
    if hp.warmup_steps < 0:
        raise ConfigError(f"algorithm.warmup_steps must be >= 0, got {hp.warmup_steps}")
    if hp.q_target_clip is not None and hp.q_target_clip <= 0:
        raise ConfigError(f"algorithm.q_target_clip must be > 0 or null, got {hp.q_target_clip}")
