"""RL²-PPO: a recurrent policy that adapts in its hidden state (Duan et al. 2016, 'RL²: Fast RL via
slow RL'; Wang et al. 2016, 'Learning to reinforcement learn'), trained with PPO (Schulman et al.
2017) over whole trials.

A trial is `episodes_per_task` consecutive episodes on one task. The GRU's input carries the
previous action, reward and an episode-start flag (Meta-World's `recurrent_info_in_obs`), its
hidden state starts from zeros when a task is drawn and runs on across the episode boundaries
inside the trial, so what the policy learns in episode 1 can pay off in episode 2. There is no
inner loop (`inner_loop = False`): the collector's one-phase mode gathers one trial per task
slot and resets the state between trials; the evaluation adapter's `adapt` is a no-op and its
state resets at `init()` (a new round of test tasks), not between episodes.

The update backpropagates through whole trials by default. With `bptt_episodes=k` it unrolls
the GRU over chunks of k episodes instead, each chunk starting from the hidden state the policy
had at that point of the trial at sampling time (computed once per iteration, not
differentiated): truncated BPTT, as metaworld-algorithms' RL² does with one-episode chunks. The
forward pass is unchanged (same hidden states, same log-probs); what changes is that minibatches
can hold many short chunks, so an iteration can take many more gradient steps at the same cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metarl_lightning.algorithms import functional as F
from metarl_lightning.algorithms.base import MetaRLModule, to_device
from metarl_lightning.algorithms.sampling import RecurrentSampler
from metarl_lightning.errors import ConfigError
from metarl_lightning.policies.distributions import action_log_prob, sample_action, to_action
from metarl_lightning.types import MetaBatch, Params, RecurrentPolicy, Rollout, State


class RL2PPO(MetaRLModule):
    name = "rl2_ppo"
    positive_keys = ("episodes_per_task", "update_epochs", "num_minibatches")
    benchmark_kinds = ("ml",)
    recurrent_policy = True

    def __init__(
        self,
        policy: RecurrentPolicy,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,  # the rest: keyword-only, no defaults (conf/algorithm/<name>.yaml holds them)
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
        episodes_per_task: int,  # trial length in episodes; read by the DataModule
        recurrent_info_in_obs: bool,  # envs append (a_{t-1}, r_{t-1}, episode start)
        update_epochs: int,
        num_minibatches: int,  # over the T trials of an iteration, or their chunks (below)
        clip: float,
        vf_coef: float,
        ent_coef: float,
        entropy_bonus: str,
        max_grad_norm: float,
        gamma: float,
        gae_lambda: float,
        reward_scale: float,
        max_nonfinite_steps: int,
        bptt_episodes: int | None,  # None: BPTT over whole trials; k: over chunks of k episodes
        task_reward_norm: float | None,  # None: one reward_scale; d: per-slot scales (below)
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler"])
        self.policy = policy
        # task_reward_norm: each task slot's mean per-step reward, an EMA over iterations
        # (decay d, `updates` for the bias correction); saved in checkpoints (exact resume)
        self._slot_reward_ema: torch.Tensor | None = None
        self._slot_reward_updates = 0

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        k, trial = cfg.algorithm.get("bptt_episodes"), cfg.algorithm.episodes_per_task
        if k is not None and not (isinstance(k, int) and k > 0 and trial % k == 0):
            raise ConfigError(f"algorithm.bptt_episodes must be null or a positive divisor of "
                              f"algorithm.episodes_per_task={trial}, got {k}; set e.g. "
                              f"algorithm.bptt_episodes=1")
        d = cfg.algorithm.get("task_reward_norm")
        if d is not None and not (isinstance(d, float) and 0.0 < d < 1.0):
            raise ConfigError(f"algorithm.task_reward_norm must be null or a decay in (0, 1), "
                              f"got {d}; set e.g. algorithm.task_reward_norm=0.9")

    # --- MetaLearner protocol ---------------------------------------------------------------
    def sampler(self) -> RecurrentSampler:
        return RecurrentSampler(self.policy)

    def initial_state(self, num_envs: int) -> State:
        return self.policy.initial_state(num_envs).to(self.device)  # zeros: a new trial

    @torch.no_grad()
    def act(self, params: Params, obs: torch.Tensor, state: State = None):
        # obs (T, 1, obs) -> one GRU step per env; state (T, hidden) in and out
        state = self.initial_state(obs.shape[0]) if state is None else state
        mean, log_std, _, state = self.policy(obs.to(self.device), state)
        p = self.policy
        return (*sample_action(mean, log_std, p.action_scale, p.action_bias, p.squash), state)

    @torch.no_grad()
    def mean_action(self, params: Params, obs: torch.Tensor, state: State = None):
        state = self.initial_state(obs.shape[0]) if state is None else state
        mean, _, _, state = self.policy(obs.to(self.device), state)
        p = self.policy
        return to_action(mean, p.action_scale, p.action_bias, p.squash), state

    def unroll(self, obs: torch.Tensor, state: State = None):
        """Whole trials from the trial-start state (or chunks from `state`, (B, hidden)):
        obs (B, N, obs) -> mean, log_std (B, N, act), values (B, N). Same inputs, same initial
        state as at sampling time, so the log-probs match the sampling-time ones before the first
        update (tests/test_methods.py)."""
        state = self.initial_state(obs.shape[0]) if state is None else state
        mean, log_std, values, _ = self.policy(obs, state)
        return mean, log_std, values

    def chunk_states(self, obs: torch.Tensor, length: int) -> torch.Tensor:
        """The hidden state at the start of each `length`-step chunk of the trials obs (T, N, obs),
        unrolled from the trial-start state: (T, N // length, hidden)."""
        return self._unroll_chunks(obs, length)[0]

    @torch.no_grad()
    def _unroll_chunks(self, obs: torch.Tensor, length: int):
        """One pass over the trials in `length`-step chunks: the chunk-start states
        (T, N // length, hidden) and the values (T, N), the whole-trial unroll's."""
        state, states, values = self.initial_state(obs.shape[0]), [], []
        for start in range(0, obs.shape[1], length):
            states.append(state)
            _, _, v, state = self.policy(obs[:, start:start + length], state)
            values.append(v)
        return torch.stack(states, 1), torch.cat(values, 1)

    @torch.no_grad()
    def process_rollout(self, rollout: Rollout) -> Rollout:
        """GAE over the whole trial. The trial is RL²'s episode (Duan et al. 2016, sec. 2.2):
        returns run across the episode boundaries inside it (the next value there is that of the
        next episode's first observation, which the policy sees next), and only the trial's end
        is terminal. `rollout` holds exactly one trial per task: (T, episodes * H)."""
        r = to_device(rollout, self.device)
        return self._with_gae(r, self.unroll(r.obs)[2], self.slot_reward_scales())

    def _with_gae(self, r: Rollout, values: torch.Tensor,
                  slot_scales: torch.Tensor | None = None) -> Rollout:
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
        trial_end = torch.zeros_like(values)
        trial_end[:, -1] = 1.0
        rewards = r.rewards * self.hparams.reward_scale
        if slot_scales is not None:
            rewards = rewards * slot_scales[:, None]
        adv = F.gae(rewards, values, next_values, trial_end, trial_end, self.hparams.gamma,
                    self.hparams.gae_lambda)
        return r._replace(advantages=adv, returns=adv + values)

    # --- algorithm.task_reward_norm ----------------------------------------------------------
    # Meta-World's classes pay very different rewards per step, and advantages are normalised
    # over the whole batch, so with one reward_scale the high-paying classes set the gradient.
    # With a decay d, slot i's rewards are also multiplied by F.task_reward_scales of the slots'
    # running mean per-step rewards: every slot's mean becomes the mean over slots. A slot keeps
    # its task class for the whole run (envs.task_ids), so this is a per-class normalisation
    # (as RL2-implementation-pytorch's per-env reward normalisation).
    def on_fit_start(self) -> None:
        # Here, before the first collection: the world size is known once the trainer runs.
        if self.hparams.task_reward_norm is not None and self.trainer.world_size > 1:
            raise ConfigError("algorithm.task_reward_norm keeps per-slot statistics in one "
                              "process; set algorithm.task_reward_norm=null or trainer.devices=1")

    def observe_slot_rewards(self, rewards: torch.Tensor) -> None:
        """Fold one iteration's rewards (T, N) into the slots' running means."""
        d, x = self.hparams.task_reward_norm, rewards.mean(1).double().cpu()
        ema = torch.zeros_like(x) if self._slot_reward_ema is None else self._slot_reward_ema
        if ema.shape != x.shape:
            raise ConfigError(f"task_reward_norm: {x.shape[0]} task slots, the statistics "
                              f"hold {ema.shape[0]}; resume with the same benchmark.meta_batch_size")
        self._slot_reward_ema = d * ema + (1 - d) * x
        self._slot_reward_updates += 1

    def slot_reward_scales(self) -> torch.Tensor | None:
        """(T,) reward multipliers from the running means, or None (off, or nothing seen yet)."""
        if self.hparams.task_reward_norm is None or self._slot_reward_ema is None:
            return None
        unbiased = self._slot_reward_ema / (1 - self.hparams.task_reward_norm
                                            ** self._slot_reward_updates)
        return F.task_reward_scales(unbiased).float().to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._slot_reward_ema is not None:
            checkpoint["slot_reward_ema"] = {"ema": self._slot_reward_ema.tolist(),
                                             "updates": self._slot_reward_updates}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("slot_reward_ema")
        if saved is not None:
            self._slot_reward_ema = torch.tensor(saved["ema"], dtype=torch.float64)
            self._slot_reward_updates = int(saved["updates"])

    # --- training ----------------------------------------------------------------------------
    def update(self, batch: MetaBatch) -> dict:
        # items: (T * N / L) chunks of L steps from their sampling-time states; bptt_episodes
        # null = one chunk per trial (L = N) from the trial-start state. One no-grad pass gives
        # the chunk-start states and the values for GAE (process_rollout's).
        r = to_device(batch.support, self.device)  # one phase: (T, N), one trial per slot
        T, N = r.rewards.shape
        k = self.hparams.bptt_episodes
        L = N if k is None else N // self.hparams.episodes_per_task * k
        states, values = self._unroll_chunks(r.obs, L)
        if self.hparams.task_reward_norm is not None:
            self.observe_slot_rewards(r.rewards)
        scales = self.slot_reward_scales()
        trials = self._with_gae(r, values, scales)
        starts = states.flatten(0, 1)
        items = Rollout(*(v.reshape(T * (N // L), L, *v.shape[2:]) for v in trials))

        def forward(idx: torch.Tensor):  # idx: a minibatch of items
            mean, log_std, values = self.unroll(items.obs[idx], starts[idx])  # (B, L, ...)
            log_probs = action_log_prob(mean, log_std, items.raw_actions[idx],
                                        self.policy.action_scale, self.policy.squash)
            entropy = F.entropy_bonus(self.hparams.entropy_bonus, mean, log_std,
                                      self.policy.action_scale, self.policy.squash)
            return (log_probs, items.log_probs[idx], items.advantages[idx], values,
                    items.returns[idx], entropy)

        metrics = self._ppo_epochs(self.optimizers(), items.obs.shape[0], forward)
        metrics["explained_variance"] = F.explained_variance(trials.returns - trials.advantages,
                                                             trials.returns)
        if scales is not None:
            metrics.update(task_reward_scale_min=scales.min(), task_reward_scale_max=scales.max())
        return metrics
