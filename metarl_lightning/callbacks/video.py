"""Rollout videos: after adaptation on one held-out task, film one evaluation episode."""

from __future__ import annotations

import os

import gymnasium as gym
import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from metarl_lightning.data.collector import single_threaded_torch
from metarl_lightning.envs.render import render_episode_gif
from metarl_lightning.evaluation import MetaLearnerAgent


class VideoCallback(L.Callback):
    """Every `every_n_steps` meta-iterations and at the end: adapt on `adaptation_episodes`
    episodes of one test task, film the next episode (mean actions) to
    `<dirpath>/video_step<N>.gif`, and log it to W&B when that logger is on. Where MuJoCo cannot
    render, warn once and carry on."""

    def __init__(self, dirpath: str, split: str = "test", seed: int = 1,
                 every_n_steps: int = 0, adaptation_episodes: int = 2, gl: str | None = None,
                 size: int = 240):
        self.dirpath, self.every, self.gl, self.size = dirpath, every_n_steps, gl, size
        self.split, self.seed = split, seed
        self.env_fn = None  # setup(): one env of the run's benchmark (trainer.datamodule.info)
        self.adaptation_episodes = adaptation_episodes
        self.disabled = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.env_fn is None:  # the first task class of the split (MT: the training tasks)
            info = trainer.datamodule.info
            split = "train" if info.kind == "mt" else self.split
            self.env_fn = info.env_fns(split=split, meta_batch_size=len(info.classes(split)),
                                       benchmark_seed=self.seed, env_seed=self.seed + 20_000,
                                       terminate_on_success=False)[0]

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if self.disabled or not (last or (self.every and step % self.every == 0)):
            return
        episodes = self._record(pl_module)
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, f"video_step{step}.gif")
        problem = render_episode_gif(self.env_fn, episodes, path, gl=self.gl, size=self.size)
        if problem:
            rank_zero_warn(f"rollout video skipped: {problem}")
            self.disabled = True
            return
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_video("val/video", [path], step=step)

    def _record(self, learner) -> list[np.ndarray]:
        """Actions of the adaptation episodes and of the filmed one, on an identical env."""
        from metaworld.evaluation import Timestep

        envs = gym.vector.SyncVectorEnv([self.env_fn],
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        agent = MetaLearnerAgent(learner, 1)
        episodes: list[np.ndarray] = []
        try:
            with single_threaded_torch():  # per-step forwards: one intra-op thread
                envs.call("sample_tasks")
                for k in range(self.adaptation_episodes + 1):
                    obs, _ = envs.reset()
                    actions, done = [], False
                    while not done:
                        if k < self.adaptation_episodes:
                            action, aux = agent.adapt_action(obs)
                        else:
                            action = agent.eval_action(obs)
                        next_obs, reward, term, trunc, _ = envs.step(action)
                        if k < self.adaptation_episodes:
                            agent.step(Timestep(obs, action, reward, term, trunc, aux))
                        actions.append(action[0])
                        done = bool(term[0] or trunc[0])
                        obs = next_obs
                    episodes.append(np.asarray(actions))
                    if k == self.adaptation_episodes - 1:
                        agent.adapt()
        finally:
            envs.close()
        return episodes
