"""ProcessVectorEnv must behave exactly like SyncVectorEnv(SAME_STEP), fail loudly, clean up."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import time

import gymnasium as gym
import metaworld
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from metaworld import _init_each_env  # the private builder metaworld.make_ml_envs uses

from metarl_lightning.envs.vector import EVAL_INFO_KEYS, ProcessVectorEnv, keep_infos, merge_infos

SAME_STEP = AutoresetMode.SAME_STEP


def reach_fns(max_steps=(7, 10, 5, 13), seed=1):
    """ML1 reach-v3 thunks as _make_ml_envs_inner builds them (tasks split i::n per env).

    Unequal episode lengths make envs autoreset at different steps, so the merged infos
    contain keys that only some envs/workers report (masks partly False).
    """
    bench = metaworld.ML1("reach-v3", seed=seed)
    tasks = [t for t in bench.train_tasks if t.env_name == "reach-v3"]
    n = len(max_steps)
    return [
        functools.partial(_init_each_env, env_cls=bench.train_classes["reach-v3"],
                          tasks=tasks[i::n], seed=seed, max_episode_steps=steps,
                          task_select="pseudorandom")
        for i, steps in enumerate(max_steps)
    ]


class RaisingEnv(gym.Env):
    """Tiny picklable env whose step raises after ``fail_at_step`` steps."""

    metadata = {"render_modes": []}

    def __init__(self, fail_at_step: int = 3, fail_in_init: bool = False):
        if fail_in_init:
            raise ValueError("cannot build this env")
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.task_name = "raising-task"
        self.fail_at_step = fail_at_step
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3), {}

    def step(self, action):
        self.t += 1
        if self.t >= self.fail_at_step:
            raise ValueError(f"boom at step {self.t}")
        return np.full(3, self.t, dtype=np.float64), 1.0, False, False, {"t": self.t}


def assert_tree_equal(a, b, path="root"):
    """Recursive equality incl. dict keys, dtypes and shapes (object arrays element-wise)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {a.keys()} vs {b}"
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: ndarray vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs " \
                                                          f"{b.dtype}{b.shape}"
        if a.dtype == object:
            for i, (x, y) in enumerate(zip(a.ravel(), b.ravel(), strict=True)):
                assert_tree_equal(x, y, f"{path}[{i}]")
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} vs {b!r}"


def strip_wall_clock(infos):
    """Drop RecordEpisodeStatistics' episode time ``t`` (wall clock differs by process)."""
    episode = infos.get("final_info", {}).get("episode", {})
    assert ("t" in episode) == ("_t" in episode)
    episode.pop("t", None)
    return infos


def no_children_alive():
    return mp.active_children() == []


def test_merge_infos_matches_add_info():
    """Keys absent from whole workers: zero / None fill, False masks, first dtype wins."""

    class Ref(gym.vector.VectorEnv):
        def __init__(self, n):
            self.num_envs = n

    per_env = [
        {"a": 1, "nested": {"x": np.float32(2.5)}},
        {},
        {"b": np.arange(3), "final_obs": np.ones(2), "c": "text"},
        {"a": 2.7, "final_info": {"success": True, "episode": {"l": 4}}, "final_obs": None},
        {"d": False},
    ]
    ref = Ref(len(per_env))
    expected = {}
    for i, info in enumerate(per_env):
        expected = ref._add_info(expected, info, i)
    for sizes in ([2, 3], [1, 1, 3], [3, 2], [5], [1, 1, 1, 1, 1]):
        bounds = np.cumsum([0, *sizes])
        parts = []
        for w in range(len(sizes)):
            sub, info = Ref(sizes[w]), {}
            for j, env_info in enumerate(per_env[bounds[w]:bounds[w + 1]]):
                info = sub._add_info(info, env_info, j)
            parts.append(info)
        assert_tree_equal(merge_infos(parts, sizes), expected)
    assert expected["a"].dtype == np.int64 and expected["final_obs"].dtype == object


def test_equivalence_with_sync_vector_env():
    fns = reach_fns()
    sync = SyncVectorEnv(fns, autoreset_mode=SAME_STEP)
    proc = ProcessVectorEnv(fns, num_workers=2, step_timeout=60)
    try:
        assert proc.num_envs == sync.num_envs == 4 and proc.num_workers == 2
        assert proc.single_observation_space == sync.single_observation_space
        assert proc.single_action_space == sync.single_action_space
        assert proc.observation_space == sync.observation_space
        assert proc.action_space == sync.action_space
        assert proc.metadata == sync.metadata
        assert proc.metadata["autoreset_mode"] == SAME_STEP

        assert_tree_equal(proc.call("sample_tasks"), sync.call("sample_tasks"))
        assert_tree_equal(proc.call("toggle_sample_tasks_on_reset", False),
                          sync.call("toggle_sample_tasks_on_reset", False))
        assert_tree_equal(proc.reset(seed=3), sync.reset(seed=3))
        assert proc.get_attr("task_name") == sync.get_attr("task_name")

        rng = np.random.default_rng(0)
        saw_partial_mask = False
        for step in range(30):
            # float64 on purpose: envs must receive the caller's dtype, as with SyncVectorEnv
            actions = rng.uniform(-1, 1, size=(4, 4))
            p_obs, p_rew, p_term, p_trunc, p_info = proc.step(actions)
            s_obs, s_rew, s_term, s_trunc, s_info = sync.step(actions)
            assert_tree_equal((p_obs, p_rew, p_term, p_trunc), (s_obs, s_rew, s_term, s_trunc),
                              f"step {step}")
            assert_tree_equal(strip_wall_clock(p_info), strip_wall_clock(s_info), f"step {step}")
            mask = s_info.get("_final_obs")
            saw_partial_mask |= mask is not None and 0 < mask.sum() < 4
        assert saw_partial_mask  # autoresets happened in some workers but not others

        assert_tree_equal(proc.call("get_checkpoint"), sync.call("get_checkpoint"))
        ckpts = list(sync.call("get_checkpoint"))
        assert_tree_equal(proc.call("load_checkpoint", ckpts), sync.call("load_checkpoint", ckpts))
        assert_tree_equal(proc.call("toggle_terminate_on_success", True),
                          sync.call("toggle_terminate_on_success", True))

        # reset with a mask that leaves worker 1 (envs 2, 3) untouched
        options = {"reset_mask": np.array([True, False, False, False])}
        assert_tree_equal(proc.reset(options=dict(options)), sync.reset(options=dict(options)))
        assert_tree_equal(proc.reset(seed=[1, 2, 3, 4]), sync.reset(seed=[1, 2, 3, 4]))

        proc.set_attr("my_attr", [10, 11, 12, 13])
        assert proc.get_attr("my_attr") == (10, 11, 12, 13)
        proc.set_attr("my_attr", "same")
        assert proc.get_attr("my_attr") == ("same",) * 4
        with pytest.raises(ValueError):
            proc.step(np.zeros((3, 4)))  # wrong number of envs: rejected in the main process
        # wrong action size: metaworld asserts len(action) == 4 inside the workers
        with pytest.raises(RuntimeError, match=r"(?s)worker 0 \(envs \[0, 1\].*"
                                               r"reach-v3.*size 4"):
            proc.step(np.zeros((4, 3)))
    finally:
        proc.close()
        sync.close()
    assert no_children_alive()


def worker_environ(pid: int) -> dict[bytes, bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)


def test_worker_exception_is_reported():
    blas_vars = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    before = {v: os.environ.get(v) for v in blas_vars}
    fns = [functools.partial(RaisingEnv, fail_at_step=k) for k in (100, 100, 2)]
    envs = ProcessVectorEnv(fns, num_workers=2, step_timeout=30)
    try:
        # workers were started single-threaded; the parent's environment is untouched
        assert {v: os.environ.get(v) for v in blas_vars} == before
        for pid in envs.worker_pids:
            assert all(worker_environ(pid)[v.encode()] == b"1" for v in blas_vars)
        envs.reset(seed=0)
        envs.step(np.zeros((3, 2), np.float32))  # step 1: fine
        start = time.monotonic()
        with pytest.raises(RuntimeError) as err:
            envs.step(np.zeros((3, 2), np.float32))
        assert time.monotonic() - start < 10
        msg = str(err.value)
        assert "worker 1" in msg and "[2]" in msg and "raising-task" in msg
        assert "ValueError: boom at step 2" in msg
        # A Python exception leaves the pipes in sync: the env still answers.
        assert envs.get_attr("t") == (2, 2, 2)
    finally:
        envs.close()
    assert no_children_alive()


def test_env_fn_failure_at_construction():
    fns = [RaisingEnv, functools.partial(RaisingEnv, fail_in_init=True)]
    with pytest.raises(RuntimeError, match=r"(?s)worker 1 \(envs \[1\].*cannot build this env"):
        ProcessVectorEnv(fns, num_workers=2, step_timeout=30)
    assert no_children_alive()


def test_killed_worker_raises_without_hanging():
    envs = ProcessVectorEnv(reach_fns(max_steps=(10, 10)), num_workers=2, step_timeout=20)
    envs.call("sample_tasks")
    envs.reset(seed=0)
    os.kill(envs.worker_pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker 1 .*died"):
        envs.step(np.zeros((2, 4)))
    assert time.monotonic() - start < 20
    assert envs.closed and no_children_alive()
    envs.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        envs.step(np.zeros((2, 4)))


def test_workers_leave_sigterm_to_the_main_process():
    """SLURM (scancel, preemption, time limit) sends SIGTERM to every process of a job step:
    the workers must outlive it so that the main process can finish its meta-iteration and
    save their state; closing still stops them."""
    envs = ProcessVectorEnv([RaisingEnv, RaisingEnv], num_workers=2)
    envs.reset()
    for pid in envs.worker_pids:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    obs, *_ = envs.step(np.zeros((2, 2), np.float32))  # both workers still answer
    assert obs.shape == (2, 3)
    envs.close()
    assert no_children_alive()


def test_hung_worker_times_out():
    envs = ProcessVectorEnv([RaisingEnv, RaisingEnv], num_workers=2)
    envs.reset()
    envs.step_timeout = 2  # short only after startup, which can take seconds on a busy box
    os.kill(envs.worker_pids[0], signal.SIGSTOP)  # alive but never answers
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker 0 .*step_timeout=2"):
        envs.step(np.zeros((2, 2), np.float32))
    assert time.monotonic() - start < 10
    assert no_children_alive()


def test_close_releases_processes_and_fds():
    fns = [RaisingEnv, RaisingEnv]

    def cycle():
        envs = ProcessVectorEnv(fns)  # num_workers=None: one per usable CPU, at most 2 here
        assert envs.num_workers == min(len(os.sched_getaffinity(0)), 2)
        envs.reset(seed=0)
        envs.step(np.zeros((2, 2), np.float32))
        procs, shm_names = list(envs._procs), [shm.name for shm in envs._shms]
        envs.close()
        envs.close()  # idempotent
        assert all(p._closed for p in procs)  # joined and released (Process.close())
        assert no_children_alive()
        assert not any(os.path.exists(f"/dev/shm/{name.lstrip('/')}") for name in shm_names)

    cycle()  # warm-up: starts multiprocessing's resource tracker (one fd, process-wide)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        cycle()
    assert len(os.listdir("/proc/self/fd")) == fds




def test_info_keys_send_back_only_what_the_protocol_reads():
    infos = {"success": np.ones(2), "_success": np.ones(2, bool), "near_object": np.zeros(2),
             "_near_object": np.ones(2, bool), "final_obs": np.array([None, None]),
             "final_info": {"success": np.ones(2), "_success": np.ones(2, bool),
                            "grasp_reward": np.zeros(2), "episode": {"r": np.ones(2)}}}
    kept = keep_infos(infos, EVAL_INFO_KEYS)
    assert set(kept) == {"success", "_success", "final_obs", "final_info"}
    assert set(kept["final_info"]) == {"success", "_success", "episode"}
    assert keep_infos(infos, None) is infos
    fns = reach_fns()
    sync = SyncVectorEnv(fns, autoreset_mode=SAME_STEP)
    proc = ProcessVectorEnv(fns, num_workers=2, step_timeout=60, info_keys=EVAL_INFO_KEYS)
    try:
        proc.call("sample_tasks")
        sync.call("sample_tasks")
        proc.reset(seed=3)
        sync.reset(seed=3)
        rng = np.random.default_rng(0)
        for step in range(15):  # episodes of 7, 10, 5 and 13 steps end in between
            actions = rng.uniform(-1, 1, size=(4, 4))
            *p_rest, p_info = proc.step(actions)
            *s_rest, s_info = sync.step(actions)
            assert_tree_equal(tuple(p_rest), tuple(s_rest), f"step {step}")
            assert_tree_equal(strip_wall_clock(p_info),
                              strip_wall_clock(keep_infos(s_info, EVAL_INFO_KEYS)), f"step {step}")
    finally:
        proc.close()
        sync.close()


@pytest.mark.slow  # used by the opt-in data.overlap only
def test_step_async_lands_the_step_even_with_a_call_in_between():
    """step_async/step_wait return what step returns; a `call` sent while a step is in flight
    (a checkpoint's get_checkpoint between an overlapped update and step_wait) waits for the
    step first, and step_wait still returns it."""
    fns = reach_fns()
    sync = SyncVectorEnv(fns, autoreset_mode=SAME_STEP)
    proc = ProcessVectorEnv(fns, num_workers=2, step_timeout=60)
    try:
        assert_tree_equal(proc.call("sample_tasks"), sync.call("sample_tasks"))
        assert_tree_equal(proc.reset(seed=3), sync.reset(seed=3))
        rng = np.random.default_rng(0)
        for step in range(12):  # envs 0 and 2 autoreset on the way
            actions = rng.uniform(-1, 1, size=(4, 4))
            proc.step_async(actions)
            if step % 3 == 1:
                assert_tree_equal(proc.call("get_checkpoint"), sync.call("get_checkpoint"))
                with pytest.raises(RuntimeError, match="step_async called twice"):
                    proc.step_async(actions)  # the landed step is still waiting for step_wait
            p_obs, p_rew, p_term, p_trunc, p_info = proc.step_wait()
            s_obs, s_rew, s_term, s_trunc, s_info = sync.step(actions)
            assert_tree_equal((p_obs, p_rew, p_term, p_trunc), (s_obs, s_rew, s_term, s_trunc),
                              f"step {step}")
            assert_tree_equal(strip_wall_clock(p_info), strip_wall_clock(s_info), f"step {step}")
        with pytest.raises(RuntimeError, match="step_wait called without step_async"):
            proc.step_wait()
        proc.step_async(np.zeros((4, 4)))  # a reset supersedes a step in flight
        assert_tree_equal(proc.reset(), sync.reset())
        assert_tree_equal(proc.step(np.zeros((4, 4)))[:4], sync.step(np.zeros((4, 4)))[:4])
    finally:
        proc.close()
        sync.close()
    assert no_children_alive()
