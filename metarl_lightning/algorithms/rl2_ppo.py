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
    ):
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler"])
        self.policy = policy

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        k, trial = cfg.algorithm.get("bptt_episodes"), cfg.algorithm.episodes_per_task
        if k is not None and not (isinstance(k, int) and k > 0 and trial % k == 0):
            raise ConfigError(f"algorithm.bptt_episodes must be null or a positive divisor of "
                              f"algorithm.episodes_per_task={trial}, got {k}; set e.g. "
                              f"algorithm.bptt_episodes=1")

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
        return self._with_gae(r, self.unroll(r.obs)[2])

    def _with_gae(self, r: Rollout, values: torch.Tensor) -> Rollout:
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
        trial_end = torch.zeros_like(values)
        trial_end[:, -1] = 1.0
        adv = F.gae(r.rewards * self.hparams.reward_scale, values, next_values, trial_end,
                    trial_end, self.hparams.gamma, self.hparams.gae_lambda)
        return r._replace(advantages=adv, returns=adv + values)

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
        trials = self._with_gae(r, values)
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
        return metrics
