"""Exactness of the fast env path (issue 13): every v3 env, stock and fast side by side, must
produce bit-identical observations, rewards, flags and infos; plus each exact stand-in against
the library call it replaces."""

from __future__ import annotations

import pickle
import warnings

import mujoco
import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP
from metaworld.types import Task
from metaworld.utils import reward_utils
from scipy.spatial.transform import Rotation

from metarl_lightning.envs import describe, fast, make_env_fns
from metarl_lightning.envs import fast_numerics as fn

NAMES = list(ALL_V3_ENVIRONMENTS)  # the 50 v3 classes (= ML45's train + test classes)
assert len(NAMES) == 50


def same(a, b) -> bool:
    """Bit-identical: same Python type, same dtype, same bytes (so -0.0 != 0.0, nan == nan)."""
    if type(a) is not type(b):
        return False
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_step(s, f, where: str) -> None:
    (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) = s, f
    assert same(o1, o2), f"{where}: obs differ at {np.flatnonzero(o1 != o2)}"
    assert same(r1, r2), f"{where}: reward {r1!r} != {r2!r}"
    assert same(te1, te2) and same(tr1, tr2), f"{where}: flags ({te1}, {tr1}) != ({te2}, {tr2})"
    assert i1.keys() == i2.keys(), where
    for k in i1:
        assert same(i1[k], i2[k]), f"{where}: info[{k!r}] {i1[k]!r} != {i2[k]!r}"


def _goals(env, n: int, seed: int) -> list[np.ndarray]:
    """Valid goal vectors the way metaworld._make_tasks draws them (unfrozen resets, global RNG)."""
    np.random.seed(seed)
    env._freeze_rand_vec, env._set_task_called = False, True
    env._set_task_inner()
    out = []
    for _ in range(n):
        env.reset()
        out.append(env._last_rand_vec.copy())
    return out


def run_side_by_side(name: str, version: str, steps: tuple[int, ...], seed: int) -> dict:
    """Episode e: a new goal (set_task), goal hidden on even e and observable on odd e, random
    actions on even e and Meta-World's scripted policy (+ noise, so it grasps and succeeds on
    some goals) on odd e; each episode runs to truncation at steps[e]."""
    cls = ALL_V3_ENVIRONMENTS[name]
    envs = [cls(reward_function_version=version),
            fast.fast_class(cls)(reward_function_version=version)]
    assert type(envs[1]) is not cls and isinstance(envs[1], cls)
    goal_lists = [_goals(e, len(steps), seed) for e in envs]  # identical history on both
    for g1, g2 in zip(*goal_lists):
        assert same(g1, g2)
    policy = ENV_POLICY_MAP[name]()
    rng = np.random.default_rng(seed)
    stats = {"success": 0.0, "grasp_success": 0.0}
    for ep, horizon in enumerate(steps):
        task = Task(env_name=name, data=pickle.dumps(
            {"env_cls": cls, "rand_vec": goal_lists[0][ep], "partially_observable": ep % 2 == 0}))
        outs = []
        for e in envs:
            e.seed(seed + ep)
            e.set_task(task)
            e.max_path_length = horizon  # truncation at the episode's end
            outs.append(e.reset())
        assert same(outs[0][0], outs[1][0]) and outs[0][1].keys() == outs[1][1].keys(), \
            f"{name} {version} ep{ep}: reset obs"
        obs = outs[0][0]
        for t in range(horizon):
            if ep % 2 == 0:
                action = rng.uniform(-1, 1, 4).astype(np.float32)
            else:
                action = np.clip(policy.get_action(obs) + rng.normal(0, 0.1, 4), -1, 1)
                action = action.astype(np.float32)
            s, f = envs[0].step(action), envs[1].step(action)
            assert_same_step(s, f, f"{name} {version} ep{ep} t{t}")
            assert s[3] == (t == horizon - 1)
            obs = s[0]
            for k in stats:
                stats[k] += float(s[4].get(k, 0.0))
        for attr in ("qpos", "qvel", "mocap_pos", "mocap_quat", "xpos", "efc_force"):
            assert same(getattr(envs[0].data, attr), getattr(envs[1].data, attr)), attr
    for e in envs:
        e.close()
    return stats


# The default suite: every env, 2 episodes (hidden goal + random actions, then another goal,
# observable, scripted policy), reward v1 on every other env and v2 on the rest.
@pytest.mark.parametrize("i,name", list(enumerate(NAMES)))
def test_fast_env_is_bit_identical(i, name):
    run_side_by_side(name, ("v1", "v2")[i % 2], steps=(25, 100), seed=i)


@pytest.mark.parametrize("name", ["push-v3", "pick-place-v3"])
def test_side_by_side_reaches_contacts_and_success(name):
    """The comparison must cover the reward branches that need a grasp and a success."""
    stats = run_side_by_side(name, "v2", steps=(10, 150, 10, 150), seed=3)
    assert stats["grasp_success"] > 0 and stats["success"] > 0, stats


@pytest.mark.slow  # ~several minutes on one core: every env x {v1, v2} x 4 full-length episodes
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("name", NAMES)
def test_fast_env_is_bit_identical_full_sweep(name, version):
    run_side_by_side(name, version, steps=(500, 500, 200, 300), seed=NAMES.index(name) + 100)


# -- the exact stand-ins ------------------------------------------------------------------------
def test_norm_matches_numpy_on_contiguous_strided_and_other_inputs():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        v = rng.normal(size=3) * 10.0 ** rng.integers(-8, 3)
        m = rng.normal(size=(3, 3))
        for x in (v, v[:2], m[:, 1], m[0], m, v.astype(np.float32), v[1]):
            assert same(fn.norm(x), np.linalg.norm(x))
        assert same(fn.norm(v, ord=2), np.linalg.norm(v, ord=2))
        assert same(fn.norm(v, ord=1), np.linalg.norm(v, ord=1))


@pytest.mark.parametrize("sigmoid", ["long_tail", "gaussian", "linear"])
def test_tolerance_matches_reward_utils(sigmoid):
    rng = np.random.default_rng(1)
    for _ in range(20000):
        x = rng.uniform(-0.5, 0.5)
        x = (float(x), np.float64(x))[rng.integers(2)]
        lo = rng.uniform(-0.1, 0.1)
        bounds = (lo, lo + rng.choice([0.0, rng.uniform(0, 0.1)]))
        margin = (0.0, float(rng.uniform(0, 0.5)), np.float64(rng.uniform(0, 0.5)))[rng.integers(3)]
        kw = dict(bounds=bounds, margin=margin, sigmoid=sigmoid)
        assert same(fn.tolerance(x, **kw), reward_utils.tolerance(x, **kw)), (x, kw)
    with pytest.raises(ValueError, match="non-negative"):
        fn.tolerance(0.3, bounds=(0, 0.1), margin=-1.0, sigmoid="long_tail")


def test_markley_quaternion_matches_scipy():
    rng = np.random.default_rng(2)
    quats = rng.normal(size=(5000, 4))
    # also rotations near each branch of the trace/diagonal argmax and exact axis rotations
    quats[:4] = np.eye(4)
    quats[4:8] = np.eye(4) + 1e-9
    mat = np.zeros(9)
    for q in quats:
        mujoco.mju_quat2Mat(mat, q / np.linalg.norm(q))  # MuJoCo's xmat, as the envs pass it
        m = mat.reshape(3, 3)
        assert same(fn.FastRotation().from_matrix(m).as_quat(), Rotation.from_matrix(m).as_quat())
    # not orthogonal (scipy projects it with an SVD): handed to scipy itself
    skew = np.array([[1.0, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert same(fn.FastRotation().from_matrix(skew).as_quat(), Rotation.from_matrix(skew).as_quat())
    with pytest.raises(ValueError, match="determinant"):
        fn.FastRotation().from_matrix(-np.eye(3)).as_quat()


def test_hstack_matches_numpy():
    a, b = np.arange(3.0), np.arange(2, dtype=np.float32)
    for tup in ((a, b), [a, a], (a, 1.0), (a[None], a[None])):
        assert same(fn.hstack(tup), np.hstack(tup))


# -- plumbing -------------------------------------------------------------------------------------
def test_fast_classes_are_module_level_and_pickle():
    cls = ALL_V3_ENVIRONMENTS["reach-v3"]
    fast_cls = fast.fast_class(cls)
    assert fast_cls is getattr(fast, fast_cls.__name__) and fast_cls.__module__ == fast.__name__
    assert pickle.loads(pickle.dumps(fast_cls)) is fast_cls
    env = fast_cls()
    assert env.task_name == cls.__name__  # metaworld.evaluation maps class names to tasks
    env.close()


def test_pickled_fast_env_steps_like_pickled_stock_env():
    """SawyerXYZEnv pickles its state; the fast env's cached MjData views must not travel."""
    cls = ALL_V3_ENVIRONMENTS["push-v3"]
    task = Task(env_name="push-v3", data=pickle.dumps(
        {"env_cls": cls, "rand_vec": np.array([0.0, 0.6, 0.02, 0.05, 0.85, 0.01]),
         "partially_observable": True}))
    copies = []
    for c in (cls, fast.fast_class(cls)):
        env = c()
        env.set_task(task)
        env.reset()
        env.step(np.zeros(4, np.float32))
        copies.append(pickle.loads(pickle.dumps(env)))
        env.close()
    assert "_fast" not in copies[1].__getstate__()["state"]
    for a in np.random.default_rng(0).uniform(-1, 1, (20, 4)).astype(np.float32):
        assert_same_step(copies[0].step(a), copies[1].step(a), "unpickled")
    assert copies[1].__dict__["_fast"].data is copies[1].data


def test_make_env_fns_swaps_classes_and_thunks_pickle():
    info = describe("ML1", "push-v3")
    kw = dict(split="train", meta_batch_size=1, benchmark_seed=1, env_seed=1)
    on, off = make_env_fns(info, **kw), make_env_fns(info, fast_step=False, **kw)
    assert on[0].keywords["env_cls"] is fast.fast_class(off[0].keywords["env_cls"])
    assert pickle.loads(pickle.dumps(on[0])).keywords["env_cls"] is on[0].keywords["env_cls"]


def test_other_metaworld_version_falls_back_with_one_warning(monkeypatch):
    cls = ALL_V3_ENVIRONMENTS["reach-v3"]
    monkeypatch.setattr(fast, "ENABLED", False)
    monkeypatch.setattr(fast, "FAST_CLASSES", {})
    monkeypatch.setattr(fast, "_warned", False)
    with pytest.warns(UserWarning, match="verified on metaworld"):
        assert fast.fast_class(cls) is cls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fast.fast_class(cls) is cls  # once only


@pytest.mark.slow  # two tiny training runs (~1 min each on 2 loaded cores)
def test_training_is_unchanged_by_fast_step(tiny_cfg):
    """Same seed, same config: the fast and the stock envs give the same run, metric for metric
    (all but the perf/* timings)."""
    from train import train

    runs = [train(tiny_cfg(f"benchmark.fast_step={flag}", "benchmark.env_name=push-v3"))[0]
            for flag in ("true", "false")]
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 5
    for k in runs[0]:
        assert k.startswith("perf/") or same(float(runs[0][k]), float(runs[1][k])), k
