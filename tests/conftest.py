"""One fixture composes the real config with Hydra's compose API and shrinks it; tests copy it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import metarl_lightning.config  # noqa: F401  (registers the structured schemas)

os.environ["WANDB_MODE"] = "offline"
ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

TINY = [
    "benchmark.max_episode_steps=10",
    "benchmark.meta_batch_size=2",
    "model=mlp",
    "model.hidden_dim=16",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "algorithm.outer_epochs=2",
    # the in-process reference collector on a SyncVectorEnv: no worker processes to start per
    # test (~3-5 s each on 2 cores); tests of the default rollout workers add
    # WORKERS (test_workers.py checks the two paths give identical meta-batches)
    "data.collector=vector",
    "data.vector_strategy=sync",
    "callbacks.meta_eval.num_evals=1",
    "callbacks.meta_eval.mt_episodes=1",
    "eval.adaptation_episodes=2",
    "eval.meta_batch_size=1",
    "eval.evaluation_episodes=1",
    "callbacks.last_checkpoint.every_n_train_steps=1",
]


WORKERS = "data.collector=workers"  # the default collector: rollout worker processes


def compose_cfg(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.root_dir = str(ROOT)
    return cfg


def algorithm_kwargs(name: str, **overrides) -> dict:
    """The hyperparameters of conf/algorithm/<name>.yaml (their one home) as keyword arguments,
    for tests that build a method directly; no scheduler unless given."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(CONF) / "algorithm" / f"{name}.yaml")
    keys = {k: v for k, v in OmegaConf.to_container(cfg).items()
            if k not in ("defaults", "_target_", "optimizer", "scheduler")}
    return {**keys, "scheduler": None, **overrides}


@pytest.fixture
def tiny_cfg(tmp_path):
    """tiny_cfg(*overrides, out=dir): the shrunk real config, writing under `out` (tmp_path)."""
    return lambda *extra, out=None: compose_cfg(TINY + list(extra), out or tmp_path)
