"""Rollout workers that run whole collection phases on their own.

Each worker process owns a set of task slots: their envs (built once, re-tasked every trial)
and a CPU copy of the policy (a `Sampler`, one torch thread). Per phase the learner writes the
parameters once into shared memory (shared parameters in row 0, or one row per slot for MAML's
adapted actors) together with each slot's noise-generator state; every worker steps its slots
through the whole phase with no per-step message and writes the rollout (obs, raw actions,
log-probs, rewards, terminated, dones, true next obs, success) into preallocated shared arrays.
One pipe message each way per worker per phase. The recurrent state (RL²) stays in the worker
for the trial.

Why: with a vector env every env step is a barrier between processes (each step waits for the
slowest worker, and the workers idle while the learner computes actions); see issue 12 and
benchmarks/throughput.py. Slots are spread over workers by cost (data/balance.py), so the
workers finish a phase at about the same time; `last_wait_share` says how long the fastest
waited for the slowest.

Exactness: the forward runs over the same slot groups in the in-process reference path
(data/collector.py, `VectorStepper`), and noise comes from per-slot generators, so both paths
give identical rollouts (tests/test_workers.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from metarl_lightning.data.collector import FIELDS as ROLLOUT  # the arrays a phase writes
from metarl_lightning.envs.vector import (
    _BLAS_VARS,
    child_env,
    collect_replies,
    serve,
    unreachable,
)
from metarl_lightning.errors import EnvFault

GEN_BYTES = 5056  # torch CPU generator state (algorithms/sampling.GENERATOR_STATE_BYTES)


def layout(num_slots: int, steps: int, obs_dim: int, act_dim: int, num_params: int,
           num_workers: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every shared array, in buffer order."""
    T, N = num_slots, steps
    return {
        "params": ((T, num_params), "float32"),
        "gen_states": ((T, GEN_BYTES), "uint8"),
        "obs": ((T, N, obs_dim), "float32"), "next_obs": ((T, N, obs_dim), "float32"),
        "raw_actions": ((T, N, act_dim), "float32"),
        "log_probs": ((T, N), "float32"), "rewards": ((T, N), "float32"),
        "terminated": ((T, N), "float32"), "dones": ((T, N), "float32"),
        "success": ((T, N), "float32"),
        "progress": ((num_workers,), "int64"),  # steps done this phase: the hang heartbeat
    }


def views(buf, spec: dict) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, (shape, dtype) in spec.items():
        dt = np.dtype(dtype)
        offset = -(-offset // 8) * 8  # 8-byte aligned
        out[name] = np.ndarray(shape, dt, buf, offset)
        offset += int(np.prod(shape)) * dt.itemsize
    return out


def nbytes(spec: dict) -> int:
    return sum(-(-int(np.prod(s)) * np.dtype(d).itemsize // 8) * 8 for s, d in spec.values())


class _SlotWorker:
    """Lives in a worker process: its slots' envs, the sampler copy and views on shared memory."""

    def __init__(self, w: int, env_fns, slots: list[int], sampler, shm_name: str, spec: dict):
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.w, self.slots, self.sampler = w, slots, sampler
        self.envs = [fn() for fn in env_fns]
        for env, slot in zip(self.envs, slots, strict=True):
            # one checkpoint id per slot (see envs.vector.make_vector_env)
            env.set_wrapper_attr("env_id", f"slot{slot}")
        self.shm = SharedMemory(name=shm_name)
        self.a = views(self.shm.buf, spec)
        self.obs: np.ndarray | None = None
        self.pending_reset: list[int] = []  # envs whose episode ended with the last phase
        self.state = None

    def info(self):
        return task_names(self.envs)

    def phase(self, new_trial: bool, per_slot: bool, horizon: int) -> tuple[float, float]:
        """Step the slots through one phase; (busy seconds, of which inside env.step)."""
        torch, a, idx = self.torch, self.a, self.slots
        from metarl_lightning.algorithms.sampling import draw_noise

        start = time.perf_counter()
        if new_trial:  # re-task: the next goal and one reset (an ended episode's included)
            self.obs = np.stack([retask(env) for env in self.envs])
            self.pending_reset = []
            self.state = self.sampler.initial_state(len(idx))
        elif self.pending_reset:  # the last phase ended its episodes: start the next ones
            for i in self.pending_reset:
                self.obs[i] = self.envs[i].reset()[0]
            self.pending_reset = []
        if per_slot:
            params = self.sampler.unflatten(torch.from_numpy(a["params"][idx]))
        else:
            self.sampler.load_flat(torch.from_numpy(a["params"][0].copy()))
            params = None
        policy = self.sampler.bind(params)
        gens = [torch.Generator() for _ in idx]
        for g, s in zip(gens, idx, strict=True):
            g.set_state(torch.from_numpy(a["gen_states"][s].copy()))
        k, steps, act_dim = len(idx), a["obs"].shape[1], a["raw_actions"].shape[-1]
        noise = draw_noise(gens, act_dim, steps).numpy()  # (k, steps, act): the phase's noise
        # the phase in local arrays (plain indexing per step), copied out once at the end
        out = {name: np.empty((k, *a[name].shape[1:]), a[name].dtype) for name in ROLLOUT}
        obs_buf, next_buf, raw_buf, logp_buf = (out[n] for n in ROLLOUT[:4])
        rew_buf, term_buf, done_buf, succ_buf = (out[n] for n in ROLLOUT[4:])
        obs, state, env_seconds = self.obs, self.state, 0.0
        progress, clock = a["progress"], time.perf_counter
        for t in range(steps):
            actions, raw, logp, state = policy(obs, noise[:, t], state)
            obs_buf[:, t], raw_buf[:, t], logp_buf[:, t] = obs, raw, logp
            nxt = np.empty_like(obs)
            for i, env in enumerate(self.envs):
                t_env = clock()
                o, r, term, trunc, info = env.step(actions[i])
                env_seconds += clock() - t_env
                done = term or trunc
                rew_buf[i, t], term_buf[i, t], done_buf[i, t] = r, term, done
                next_buf[i, t] = o  # the true next obs (the final obs at an episode end)
                succ_buf[i, t] = info.get("success", 0.0)
                if done:
                    if (t + 1) % horizon:
                        raise RuntimeError(
                            f"episode ended at step {t + 1} of {horizon} for slot {idx[i]}; "
                            "training envs must run full episodes (terminate_on_success=False)")
                    if t + 1 < steps:
                        o, _ = env.reset()  # same-step autoreset, as SyncVectorEnv(SAME_STEP)
                    else:  # reset when the next phase starts, unless it re-tasks (resets) anyway
                        self.pending_reset.append(i)
                nxt[i] = o
            obs = nxt
            progress[self.w] += 1
        for name in ROLLOUT:
            a[name][idx] = out[name]
        self.obs, self.state = obs, state
        for g, s in zip(gens, idx, strict=True):
            a["gen_states"][s] = g.get_state().numpy()
        return time.perf_counter() - start, env_seconds

    def call(self, name: str, args: tuple, kwargs: dict) -> list:
        out = []
        for env in self.envs:
            attr = env.get_wrapper_attr(name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return out

    def set_attr(self, name: str, values: list) -> None:
        for env, value in zip(self.envs, values, strict=True):
            env.set_wrapper_attr(name, value)

    def close(self) -> None:
        self.a = {}  # drop the views first: SharedMemory.close() refuses exported buffers
        self.shm.close()
        for env in self.envs:
            env.close()


def retask(env) -> np.ndarray:
    """Move a Meta-World env to its next goal and reset it once through the whole wrapper stack;
    the reset obs. `SyncVectorEnv`'s way, `call("sample_tasks")` then `reset()`, resets twice
    (sample_tasks resets below the outer wrappers) to the same state (tests/test_workers.py
    compares the two paths); a reset costs 10-20 ms (the hand is settled over 2 x 250 `mj_step`s),
    ~5% of a 500-step episode."""
    toggle = env.get_wrapper_attr("toggle_sample_tasks_on_reset")
    toggle(True)
    try:
        return env.reset()[0]
    finally:
        toggle(False)


def task_names(envs: Sequence) -> list | None:
    """Task names of some envs for error messages (Meta-World class names mapped as
    metaworld.evaluation does)."""
    with contextlib.suppress(Exception):
        names = {env.get_wrapper_attr("task_name") for env in envs}
        with contextlib.suppress(ImportError):
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
            by_class = {cls.__name__: name for name, cls in ALL_V3_ENVIRONMENTS.items()}
            names = {by_class.get(n, n) for n in names}
        return sorted(names)
    return None


def _worker_main(conn, w, env_fns, slots, sampler, shm_name, spec) -> None:
    # envs/vector.serve: signals left to the main process, one reply per command, EOF = stop
    serve(conn, lambda: _SlotWorker(w, env_fns, slots, sampler, shm_name, spec),
          lambda worker: task_names(worker.envs))


class PhaseWorkers:
    """Worker processes stepping task slots through whole phases.

    Args:
        env_fns: one picklable thunk per task slot (this rank's slots, in order).
        groups: the slots of each worker (data/balance.py), a partition of range(len(env_fns)).
        sampler: a CPU `Sampler` (pickled once into every worker).
        steps: env steps per slot per phase (episodes_per_task x max_episode_steps).
        step_timeout: seconds a worker may go without finishing an env step before the workers
            are closed and `EnvFault` raised.
        start_timeout: the same for start-up (spawn, imports of torch and Meta-World, env
            building: minutes on a loaded 2-core machine).
    """

    def __init__(self, env_fns: list[Callable], groups: list[list[int]], sampler, steps: int,
                 obs_dim: int, act_dim: int, context: str = "spawn", step_timeout: float = 120.0,
                 start_timeout: float = 600.0):
        self.num_envs, self.groups = len(env_fns), [list(g) for g in groups]
        if sorted(s for g in self.groups for s in g) != list(range(self.num_envs)):
            raise ValueError(f"groups {groups} do not partition {self.num_envs} slots")
        self.num_workers, self.step_timeout = len(self.groups), float(step_timeout)
        self.steps, self.closed, self._fault = steps, False, None
        self._procs: list = []
        self._conns: list = []
        self._tasks: list = [None] * self.num_workers
        self.last_busy: list[float] = []  # per worker, last phase: seconds busy
        self.last_env: list[float] = []  # ... of which inside env.step
        self.spec = layout(self.num_envs, steps, obs_dim, act_dim, sampler.num_parameters(),
                           self.num_workers)
        self._shm = SharedMemory(create=True, size=nbytes(self.spec))
        self.arrays = views(self._shm.buf, self.spec)
        try:
            ctx = mp.get_context(context)
            with child_env(**dict.fromkeys(_BLAS_VARS, "1")):
                for w, slots in enumerate(self.groups):
                    parent, child = ctx.Pipe()
                    proc = ctx.Process(target=_worker_main, name=f"RolloutWorker-{w}", daemon=True,
                                       args=(child, w, [env_fns[s] for s in slots], slots,
                                             sampler, self._shm.name, self.spec))
                    self._conns.append(parent)
                    self._procs.append(proc)
                    proc.start()
                    child.close()  # a dead worker shows up as EOF on our end
            self.step_timeout, step_timeout = float(start_timeout), self.step_timeout
            self._tasks = self._collect("init", range(self.num_workers))
            self.step_timeout = step_timeout
        except BaseException:
            self.close(terminate=True)
            raise

    @property
    def worker_pids(self) -> tuple[int | None, ...]:
        return tuple(proc.pid for proc in self._procs)

    @property
    def last_wait_share(self) -> float:
        """How long the fastest worker waited for the slowest in the last phase, as a share of
        the phase."""
        if not self.last_busy:
            return 0.0
        return (max(self.last_busy) - min(self.last_busy)) / max(max(self.last_busy), 1e-9)

    def run_phase(self, new_trial: bool, per_slot: bool, horizon: int) -> None:
        """The caller has written `arrays['params']` and `arrays['gen_states']`; on return the
        rollout arrays hold the phase and `gen_states` the generators after it."""
        self.arrays["progress"][:] = 0
        replies = self._run("phase", [(new_trial, per_slot, horizon)] * self.num_workers)
        self.last_busy, self.last_env = [b for b, _ in replies], [e for _, e in replies]

    # vector-env-like access to the envs, results in slot order -----------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        replies = self._run("call", [(name, args, kwargs)] * self.num_workers)
        out: list = [None] * self.num_envs
        for slots, reply in zip(self.groups, replies, strict=True):
            for s, value in zip(slots, reply, strict=True):
                out[s] = value
        return tuple(out)

    def get_attr(self, name: str) -> tuple:
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        values = values if isinstance(values, list | tuple) else [values] * self.num_envs
        self._run("set_attr", [(name, [values[s] for s in slots]) for slots in self.groups])

    def close(self, terminate: bool = False) -> None:
        """Stop the workers (SIGKILL at once if `terminate`), release pipes and shared memory."""
        if self.closed:
            return
        self.closed = True
        if not terminate:
            for conn, proc in zip(self._conns, self._procs, strict=False):
                with contextlib.suppress(Exception):
                    if proc.is_alive():
                        conn.send(("close", ()))
        deadline = time.monotonic() + (0.0 if terminate else 10.0)
        for proc in self._procs:
            if proc.pid is None:
                continue
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive() and not terminate:
                proc.terminate()
                proc.join(timeout=1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
            proc.close()
        for conn in self._conns:
            conn.close()
        self.arrays = {}
        self._shm.close()
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()
        self._procs, self._conns = [], []

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close(terminate=True)

    # plumbing ---------------------------------------------------------------------------------
    def _run(self, cmd: str, args: list) -> list:
        if self.closed:
            raise EnvFault(f"rollout workers were closed by an earlier fault: {self._fault}"
                           if self._fault else "rollout workers are closed")
        for w, a in enumerate(args):
            try:
                self._conns[w].send((cmd, a))
            except OSError as exc:  # BrokenPipeError: e.g. killed before the command was sent
                self._fail(w, cmd, unreachable(self._procs[w], exc))
        return self._collect(cmd, range(self.num_workers))

    def _collect(self, cmd: str, workers) -> list:
        return collect_replies(self, cmd, workers)

    def _recv(self, w: int, cmd: str):
        conn, proc = self._conns[w], self._procs[w]
        progress = self.arrays["progress"]
        last, deadline = int(progress[w]), time.monotonic() + self.step_timeout
        # Poll in short slices: a dead worker is noticed at once, a hung one (no env step
        # finished for step_timeout seconds) after the timeout, however long the phase is.
        while not conn.poll(1.0):
            if not proc.is_alive():
                self._fail(w, cmd, f"worker process died (exit code {proc.exitcode})")
            now_progress = int(progress[w])
            if now_progress != last:
                last, deadline = now_progress, time.monotonic() + self.step_timeout
            elif time.monotonic() >= deadline:
                self._fail(w, cmd, f"no env step within step_timeout={self.step_timeout}s")
        try:
            return conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=1.0)
            self._fail(w, cmd, f"worker process died (exit code {proc.exitcode})")

    def _describe(self, w: int, tasks: list | None = None) -> str:
        tasks = tasks or self._tasks[w]
        return (f"rollout worker {w} (pid {self._procs[w].pid if self._procs else '?'}, slots "
                f"{self.groups[w]}, task_name {tasks if tasks else 'unknown'})")

    def _fail(self, w: int, cmd: str, why: str):
        message = f"{self._describe(w)} failed in {cmd!r}: {why}; the workers are now closed"
        self._fault = message
        self.close(terminate=True)
        raise EnvFault(message)


def default_num_workers() -> int:
    return len(os.sched_getaffinity(0))
