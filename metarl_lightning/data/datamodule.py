"""LightningDataModule streaming one meta-batch per training step from Meta-World envs."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from metarl_lightning import envs as mw
from metarl_lightning.data.collector import RolloutCollector
from metarl_lightning.envs import make_vector_env
from metarl_lightning.types import MetaBatch, MetaLearner


class MetaBatchStream(IterableDataset):
    """Endless stream of meta-batches. The learner is the LightningModule: the stream asks it for
    actions and sampling-time adaptation; data flows one way, into `training_step`."""

    def __init__(self, collector: RolloutCollector, learner: MetaLearner):
        self.collector, self.learner = collector, learner

    def __iter__(self) -> Iterator[MetaBatch]:
        while True:
            yield self.collector.collect(self.learner)


class MetaWorldDataModule(L.LightningDataModule):
    def __init__(self, benchmark: str, meta_batch_size: int, episodes_per_task: int,
                 env_name: str | None = None, max_episode_steps: int = 500,
                 use_one_hot: bool = False, reward_function_version: str = "v2",
                 seed: int = 1, num_workers: int | None = None, vector_strategy: str = "process",
                 recurrent_info_in_obs: bool = False):
        super().__init__()
        self.info = mw.describe(benchmark, env_name, use_one_hot, recurrent_info_in_obs)
        mw.check_meta_batch_size(self.info, meta_batch_size, "train")
        self.meta_batch_size = meta_batch_size
        self.episodes_per_task = episodes_per_task
        self.max_episode_steps = max_episode_steps
        self.reward_function_version = reward_function_version
        self.seed = seed
        self.num_workers = num_workers
        self.vector_strategy = vector_strategy
        self.envs: gym.vector.VectorEnv | None = None
        self.collector: RolloutCollector | None = None
        self._pending_env_state: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.envs is not None:  # built once per run
            return
        rank = self.trainer.global_rank if self.trainer is not None else 0
        fns = mw.make_env_fns(
            self.info, split="train", meta_batch_size=self.meta_batch_size,
            benchmark_seed=self.seed,  # same goals on every rank
            env_seed=self.seed + 1000 * rank,  # different task order and noise per rank
            max_episode_steps=self.max_episode_steps, terminate_on_success=False,
            task_select="pseudorandom", reward_function_version=self.reward_function_version,
        )
        self.envs = make_vector_env(fns, self.vector_strategy, self.num_workers)
        got = self.envs.single_observation_space.shape[0]
        if got != self.info.obs_dim:
            raise RuntimeError(f"env observation size {got} != expected {self.info.obs_dim}")
        self.collector = RolloutCollector(self.envs, self.episodes_per_task,
                                          self.max_episode_steps)
        if self._pending_env_state is not None:
            self.load_state_dict(self._pending_env_state)

    def train_dataloader(self) -> DataLoader:
        learner = self.trainer.lightning_module
        # batch_size=None: the stream yields whole meta-batches; num_workers=0: envs live in this
        # process's stepper (which has its own worker processes), the policy in this one.
        # Own generator: building the loader's iterator draws a base seed, which must not consume
        # the global torch RNG (restored from checkpoints for exact resume).
        return DataLoader(MetaBatchStream(self.collector, learner), batch_size=None, num_workers=0,
                          generator=torch.Generator().manual_seed(self.seed))

    # Env and task-sampler state travels in the Lightning checkpoint (resume is exact).
    def state_dict(self) -> dict:
        if self.envs is None:
            return {}
        return {"env_checkpoints": list(self.envs.call("get_checkpoint"))}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.envs is None:
            self._pending_env_state = state
            return
        self.envs.call("load_checkpoint", state["env_checkpoints"])
        self._pending_env_state = None

    def on_exception(self, exception: BaseException) -> None:
        self.teardown()  # Lightning skips teardown hooks on errors: close the env workers here

    def teardown(self, stage: str | None = None) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None
