"""LightningDataModule streaming one meta-batch per training step from Meta-World envs."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator

import gymnasium as gym
import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from metarl_lightning import envs as mw
from metarl_lightning.algorithms.sampling import slot_generators
from metarl_lightning.data.balance import assign_slots, slot_costs
from metarl_lightning.data.collector import RolloutCollector, VectorStepper, WorkerStepper
from metarl_lightning.data.workers import PhaseWorkers, default_num_workers
from metarl_lightning.envs import make_vector_env
from metarl_lightning.envs.benchmarks import ACTION_DIM
from metarl_lightning.errors import EnvFault
from metarl_lightning.types import MetaBatch, MetaLearner

log = logging.getLogger(__name__)


class MetaBatchStream(IterableDataset):
    """Endless stream of meta-batches. The learner is the LightningModule: the stream asks it for
    actions and sampling-time adaptation; data flows one way, into `training_step`.

    An env fault (a worker died, hung past its timeout, or an env raised) discards the partial
    meta-batch; `restart()` rebuilds the envs and returns True, or returns False when the run's
    restarts are used up, and the fault propagates: the run stops with its last checkpoint.
    """

    def __init__(self, collector: Callable[[], RolloutCollector], learner: MetaLearner,
                 restart: Callable[[], bool]):
        self.collector, self.learner, self.restart = collector, learner, restart

    def __iter__(self) -> Iterator[MetaBatch]:
        while True:
            try:
                batch = self.collector().collect(self.learner)
            except EnvFault as fault:
                log.warning("env fault: %s", str(fault).splitlines()[0])
                if not self.restart():
                    raise
                continue
            yield batch


class MetaWorldDataModule(L.LightningDataModule):
    """`benchmark`: the run's BenchmarkInfo (build.benchmark_info), also read from here by the
    callbacks that build envs of their own (`trainer.datamodule.info`)."""

    def __init__(self, benchmark: mw.BenchmarkInfo, meta_batch_size: int, episodes_per_task: int,
                 seed: int = 1, num_workers: int | None = None, vector_strategy: str = "process",
                 env_restarts: int = 0, collector: str = "workers", *, overlap: bool):
        super().__init__()
        self.info = benchmark
        mw.check_meta_batch_size(self.info, meta_batch_size, "train")
        self.meta_batch_size = meta_batch_size
        self.episodes_per_task = episodes_per_task
        self.seed = seed
        self.num_workers = num_workers
        self.vector_strategy = vector_strategy
        if collector not in ("workers", "vector"):
            raise ValueError(f"data.collector must be workers or vector, got {collector!r}")
        self.collector_kind = collector
        self.generators: list[torch.Generator] = []  # action noise, one per task slot
        self.env_restarts = env_restarts
        self.overlap = overlap  # off-policy stream only
        self.restarts_done = 0
        self.envs: gym.vector.VectorEnv | None = None
        self.collector: RolloutCollector | None = None
        self._pending_env_state: dict | None = None
        self.rank, self.world_size = 0, 1  # set in setup(): this process's share of the tasks
        self.learner = None  # the sampler's source; None: the trainer's LightningModule

    def setup(self, stage: str | None = None) -> None:
        if self.envs is not None:  # built once per run
            return
        self._build_envs()
        if self.world_size > 1:  # per-rank minibatch order (the action noise is per slot)
            torch.manual_seed(self.seed + 1000 * self.rank)
        if self._pending_env_state is not None:
            self.load_state_dict(self._pending_env_state)

    def _build_envs(self) -> None:
        rank, world = _rank_and_world(self.trainer)
        mw.check_world_size(self.info, self.meta_batch_size, world)
        fns = self.info.env_fns(
            split="train", meta_batch_size=self.meta_batch_size,
            benchmark_seed=self.seed,  # same goals on every rank
            env_seed=self.seed + 1000 * rank,  # different task order and noise per rank
            terminate_on_success=False, task_select="pseudorandom",
        )
        # DDP: meta_batch_size is the whole meta-batch; rank r steps slots r, r+W, r+2W, ...
        # (each slot keeps its own share of its class's goals, so ranks never share a task).
        fns = fns[rank::world]
        slots = list(range(self.meta_batch_size))[rank::world]  # this rank's global slots
        if not self.generators:  # kept across env restarts; replaced by a checkpoint's
            self.generators = slot_generators(self.seed, slots)
        num_workers = self.num_workers
        if num_workers is None:
            num_workers = (_workers_per_rank(self.trainer.num_devices) if world > 1
                           else default_num_workers())
        classes = self.info.train_classes
        ids = mw.task_ids(self.info, self.meta_batch_size, "train")
        groups = assign_slots(slot_costs([classes[ids[g]] for g in slots], self.info.fast_step),
                              num_workers)
        steps = self.episodes_per_task * self.info.max_episode_steps
        self.rank, self.world_size = rank, world
        # Off-policy learners (MT-SAC) step a vector env one step at a time into their replay
        # buffer (data/offpolicy.py); phase workers serve the on-policy methods.
        off_policy = getattr(self._learner(), "off_policy", False)
        if self.collector_kind == "workers" and not off_policy:
            sampler = copy.deepcopy(self._learner().sampler())  # a CPU copy for the workers
            sampler.module.cpu()
            self.envs = PhaseWorkers(fns, groups, sampler, steps, self.info.obs_dim, ACTION_DIM)
            stepper = WorkerStepper(self.envs)
        else:
            strategy = self.vector_strategy
            if off_policy and len(fns) == 1:
                # One env has nothing to step in parallel, and the learner waits for every step:
                # a worker process only adds a pipe round trip (MT1 reach, loaded VM: 1.25-1.5 ms
                # per step in a ProcessVectorEnv against 0.46-0.48 ms in a SyncVectorEnv).
                strategy = "sync"
            self.envs = make_vector_env(fns, strategy, num_workers)
            got = self.envs.single_observation_space.shape[0]
            if got != self.info.obs_dim:
                raise RuntimeError(f"env observation size {got} != expected {self.info.obs_dim}")
            stepper = VectorStepper(self.envs, groups, steps)
        self.collector = RolloutCollector(stepper, self.generators, self.episodes_per_task,
                                          self.info.max_episode_steps)

    def _learner(self):
        if self.learner is not None:
            return self.learner
        return self.trainer.lightning_module

    def restart_envs(self) -> bool:
        """After an env fault: close whatever is left and build the envs afresh (same seeds);
        False once `env_restarts` restarts have been made in this run."""
        if self.restarts_done >= self.env_restarts:
            return False
        self.restarts_done += 1
        log.warning("rebuilding the envs (restart %d of %d)", self.restarts_done, self.env_restarts)
        if self.envs is not None:
            self.envs.close()
        self._build_envs()
        return True

    def train_dataloader(self) -> DataLoader:
        learner = self.trainer.lightning_module
        # batch_size=None: the stream yields whole meta-batches; num_workers=0: envs live in this
        # process's stepper (which has its own worker processes), the policy in this one.
        # Own generator: building the loader's iterator draws a base seed, which must not consume
        # the global torch RNG (restored from checkpoints for exact resume).
        stream = MetaBatchStream(lambda: self.collector, learner, self.restart_envs)
        if getattr(learner, "off_policy", False):  # SAC: env steps into a replay buffer
            from metarl_lightning.data.offpolicy import OffPolicyStream
            stream = OffPolicyStream(lambda: self.envs, learner, self.restart_envs, self.overlap)
        return DataLoader(stream, batch_size=None, num_workers=0,
                          generator=torch.Generator().manual_seed(self.seed))

    # Env and task-sampler state travels in the Lightning checkpoint (resume is exact).
    # Under DDP every rank calls state_dict() (Trainer.save_checkpoint runs on all ranks): the
    # slots are gathered into the global slot order, so any world size can resume from it.
    def state_dict(self) -> dict:
        if self.envs is None:
            return {}
        noise = [g.get_state() for g in self.generators]
        try:
            envs = [ckpt for _, ckpt in self.envs.call("get_checkpoint")]
        except EnvFault as fault:  # the checkpoint still holds the module; envs start afresh
            if self.world_size > 1:
                raise  # the other ranks wait in all_gather: stop rather than hang
            log.warning("env state not saved (%s)", str(fault).splitlines()[0])
            return {}
        mine = list(zip(envs, noise, strict=True))
        if self.world_size > 1:
            per_rank: list = [None] * self.world_size
            torch.distributed.all_gather_object(per_rank, mine)
            # rank r holds global slots r, r+W, ...: interleave back into slot order
            mine = [slot for slots in zip(*per_rank) for slot in slots]
        return {"env_checkpoints": [(f"slot{g}", env) for g, (env, _) in enumerate(mine)],
                "noise_generators": [gen for _, gen in mine]}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.envs is None:
            self._pending_env_state = state
            return
        # this rank's slots, renamed to the ids of its own sub-envs ("slot<local index>")
        mine = state["env_checkpoints"][self.rank::self.world_size]
        self.envs.call("load_checkpoint", [(f"slot{j}", ckpt) for j, (_, ckpt) in enumerate(mine)])
        if "noise_generators" in state:  # older checkpoints: the noise starts afresh
            for g, s in zip(self.generators, state["noise_generators"][self.rank::self.world_size],
                            strict=True):
                g.set_state(s)
        self._pending_env_state = None

    def on_exception(self, exception: BaseException) -> None:
        self.teardown()  # Lightning skips teardown hooks on errors: close the env workers here

    def teardown(self, stage: str | None = None) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


def _rank_and_world(trainer: L.Trainer | None) -> tuple[int, int]:
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def _workers_per_rank(local_ranks: int) -> int:
    """Env worker processes per DDP rank: the cores SLURM gave this rank's task, else this
    machine's cores shared by its ranks (ddp_spawn and local ddp see every core)."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)
