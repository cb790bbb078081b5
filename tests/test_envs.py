"""Official splits, all 50 goals, meta-batch validation, and real env construction."""

import gymnasium as gym
import numpy as np
import pytest

from metarl_lightning import envs
from metarl_lightning.envs import benchmarks as B
from metarl_lightning.types import ConfigError


def test_ml10_train_and_test_classes_are_the_official_disjoint_splits():
    info = envs.describe("ML10")
    assert len(info.train_classes) == 10 and len(info.test_classes) == 5
    assert not set(info.train_classes) & set(info.test_classes)
    assert "drawer-open-v3" in info.test_classes


def test_ml1_test_goals_differ_from_train_goals():
    bench = B.benchmark("ML1", "reach-v3", 1)
    train = {t.data for t in bench.train_tasks}
    test = {t.data for t in bench.test_tasks}
    assert len(train) == 50 and len(test) == 50 and not train & test


def test_every_goal_of_every_class_is_used():
    info = envs.describe("ML1", "reach-v3")
    fns = envs.make_env_fns(info, split="train", meta_batch_size=10, benchmark_seed=1,
                            env_seed=1)
    goals = [t.data for f in fns for t in f.keywords["tasks"]]
    assert len(fns) == 10 and len(goals) == 50 and len(set(goals)) == 50


def test_valid_meta_batch_sizes():
    assert envs.valid_meta_batch_sizes(1) == [1, 2, 5, 10, 25, 50]
    assert envs.valid_meta_batch_sizes(10)[:3] == [10, 20, 50]


def test_indivisible_meta_batch_lists_valid_values():
    info = envs.describe("ML10")
    with pytest.raises(ConfigError, match="valid values: 10, 20, 50"):
        envs.check_meta_batch_size(info, 15, "train")


def test_unknown_names_are_rejected_with_choices():
    with pytest.raises(ConfigError, match="choose one of"):
        envs.describe("ML11")
    with pytest.raises(ConfigError, match="reach-v3"):
        envs.describe("ML1", "reach-v2")


def test_ml1_builds_real_envs_that_follow_the_task_slots():
    info = envs.describe("ML1", "reach-v3")
    fns = envs.make_env_fns(info, split="test", meta_batch_size=2, benchmark_seed=1, env_seed=1,
                            max_episode_steps=5)
    vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        vec.call("sample_tasks")
        obs, _ = vec.reset()
        assert obs.shape == (2, 39)
        assert np.all(obs[:, -3:] == 0)  # ML: goal hidden from the observation
        for _ in range(5):
            obs, r, term, trunc, info_ = vec.step(np.zeros((2, 4), np.float32))
        assert trunc.all() and not term.any()  # 5-step episodes end by time limit
    finally:
        vec.close()


def test_mt10_appends_one_hot_task_ids():
    info = envs.describe("MT10", use_one_hot=True)
    assert info.obs_dim == 49
    fns = envs.make_env_fns(info, split="train", meta_batch_size=10, benchmark_seed=1,
                            env_seed=1, max_episode_steps=5)
    env = fns[3]()
    env.get_wrapper_attr("sample_tasks")()
    obs, _ = env.reset()
    assert obs.shape == (49,) and obs[39 + 3] == 1 and obs[39:].sum() == 1
    assert np.any(obs[36:39] != 0)  # MT: goal observable
    env.close()
    assert envs.task_ids(info, 20, "train")[:4] == [0, 0, 1, 1]
