"""Multi-process vector env: one worker process per core, each stepping several envs.

Why this exists: one Meta-World v3 env steps at ~4.5k steps/s on one core.
``gymnasium.vector.SyncVectorEnv`` uses a single core, and ``AsyncVectorEnv`` starts one
process per env, so MT10 (10 envs) or an ML meta-batch (20+ envs) oversubscribes a
2-core machine. ``ProcessVectorEnv`` starts ``num_workers`` processes (default: one per
usable core); worker ``w`` owns a contiguous slice of the envs inside its own
``SyncVectorEnv(slice, autoreset_mode=SAME_STEP)`` and the main process concatenates the
per-worker results. Obs, rewards, terminations, truncations and the merged ``infos``
(``final_obs``, ``final_info``, ``_key`` masks) are identical to
``SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)``.

Observations and actions travel through shared memory, the small infos dicts and
``call``/``get_attr`` results through one pipe per worker. Workers are started with
OMP/MKL/OPENBLAS_NUM_THREADS=1: BLAS thread pools oversubscribing 2 cores halve throughput.
Only array observation/action spaces (Box, Discrete, MultiDiscrete, MultiBinary) are
supported, which covers Meta-World.

What to expect (benchmarks/throughput_envs.py): each vector step takes as long as the
slowest worker, plus ~0.1-0.5 ms of IPC. MT10 env costs are uneven (push/pick-place
~0.7 ms per step, window-open ~0.2 ms), so with 2 workers the ceiling is ~1.65x sync. On
a shared VM whose 2 vCPUs deliver only ~1 CPU of parallel work, expect no gain at all.
Workers import this module, hence the package ``__init__``s: keep those free of torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Collection, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, MultiBinary, MultiDiscrete
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from metarl_lightning.errors import EnvFault

__all__ = ["EVAL_INFO_KEYS", "ProcessVectorEnv", "keep_infos", "make_vector_env", "merge_infos"]

# What metaworld.evaluation and the collector read of `infos`: success, final obs, and the
# episode return of RecordEpisodeStatistics (final_info["episode"]["r"]).
EVAL_INFO_KEYS = ("success", "final_obs", "final_info", "episode")
_BLAS_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_ARRAY_SPACES = (Box, MultiDiscrete, MultiBinary)  # batched as one ndarray (Discrete -> MD)
_ACTION_ITEMSIZE = 8  # action buffer holds any <= 8-byte dtype, so actions reach the envs
# with the caller's dtype exactly as in SyncVectorEnv (float64 vs float32 changes results)


def merge_infos(parts: Sequence[dict], sizes: Sequence[int]) -> dict:
    """Concatenate per-worker vector ``infos`` along axis 0, as one SyncVectorEnv would.

    A key missing from a worker is filled with zeros of the same dtype / trailing shape
    (``None`` for object arrays such as ``final_obs``; ``False`` for ``_key`` masks).
    The dtype is taken from the first worker holding the key, mirroring SyncVectorEnv,
    which types each array by the first env that reports the key.
    """
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k in part):  # ordered union of keys
        first = next(part[key] for part in parts if key in part)
        if isinstance(first, dict):
            merged[key] = merge_infos([part.get(key, {}) for part in parts], sizes)
            continue
        fill = None if first.dtype == object else 0
        chunks = [part[key] if key in part else np.full((size, *first.shape[1:]), fill, first.dtype)
                  for part, size in zip(parts, sizes, strict=True)]
        merged[key] = np.concatenate(chunks, dtype=first.dtype, casting="unsafe")
    return merged


def keep_infos(infos: dict, keys: Collection[str] | None) -> dict:
    """Only `keys` (with their `_key` masks) of a vector `infos`, at the top level and inside
    `final_info`; everything if `keys` is None."""
    if keys is None:
        return infos
    out = {k: v for k, v in infos.items() if k.lstrip("_") in keys}
    if "final_info" in out:
        out["final_info"] = {k: v for k, v in out["final_info"].items() if k.lstrip("_") in keys}
    return out


def unreachable(proc, exc: OSError) -> str:
    """Why a send to a worker failed: a worker that died before the command reached it (a killed
    one, say) is reported as dead, like one that dies while working; else the pipe error."""
    proc.join(timeout=1.0)
    if proc.exitcode is not None:
        return f"worker process died (exit code {proc.exitcode})"
    return f"worker process is not reachable ({exc!r})"


def collect_replies(pool, cmd: str, workers) -> list:
    """Wait for one reply per worker of `pool` (its `_recv(w, cmd)` and `_describe(w, tasks)`);
    raise one EnvFault with every worker's error after draining them all. Shared by
    ProcessVectorEnv and data/workers.py's PhaseWorkers."""
    replies, errors = [], []
    for w in workers:
        status, payload = pool._recv(w, cmd)
        if status == "ok":
            replies.append(payload)
        else:
            text, tb, tasks = payload
            errors.append(f"{pool._describe(w, tasks)} raised in {cmd!r}: {text}\n"
                          f"--- worker traceback ---\n{tb}")
    if errors:
        raise EnvFault("\n".join(errors))
    return replies


class _Worker:
    """Lives in a worker process: a SyncVectorEnv plus views on the shared buffers."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]],
                 info_keys: Collection[str] | None = None):
        self.envs = SyncVectorEnv(env_fns, copy=False, autoreset_mode=AutoresetMode.SAME_STEP)
        self.shms: list[SharedMemory] = []
        self.info_keys = info_keys

    def info(self):
        e = self.envs
        return (e.single_observation_space, e.single_action_space, e.metadata, e.render_mode,
                _task_names(self))

    def attach(self, obs_name: str, act_name: str, first_env: int):
        self.shms = [SharedMemory(name=obs_name), SharedMemory(name=act_name)]
        space = self.envs.observation_space
        row_bytes = int(np.prod(space.shape[1:])) * space.dtype.itemsize
        self.obs = np.ndarray(space.shape, space.dtype, self.shms[0].buf, first_env * row_bytes)
        self.first_env = first_env

    def reset(self, seeds, options):
        obs, infos = self.envs.reset(seed=seeds, options=options)
        self.obs[...] = obs
        return keep_infos(infos, self.info_keys)

    def step(self, dtype: str, row_shape: tuple):
        dtype = np.dtype(dtype)
        offset = self.first_env * int(np.prod(row_shape)) * dtype.itemsize
        view = np.ndarray((self.envs.num_envs, *row_shape), dtype, self.shms[1].buf, offset)
        actions = view.copy()  # the next step overwrites the buffer; envs may keep a reference
        del view
        obs, rewards, terminations, truncations, infos = self.envs.step(actions)
        self.obs[...] = obs
        # the pickled infos are most of a step's IPC: only the keys the caller reads travel
        return rewards, terminations, truncations, keep_infos(infos, self.info_keys)

    def forward(self, method: str, args: tuple, kwargs: dict):  # call, get_attr, set_attr...
        return getattr(self.envs, method)(*args, **kwargs)

    def close(self):
        self.obs = None  # drop the view first: SharedMemory.close() refuses exported buffers
        for shm in self.shms:
            shm.close()
        self.envs.close()


def _task_names(worker: _Worker | None) -> list | None:
    """The task names of a worker's envs, for error messages (Meta-World class names mapped to
    task names as metaworld.evaluation does; other envs' `task_name` as is)."""
    with contextlib.suppress(Exception):
        names = set(worker.envs.get_attr("task_name"))
        with contextlib.suppress(ImportError):
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
            by_class = {cls.__name__: name for name, cls in ALL_V3_ENVIRONMENTS.items()}
            names = {by_class.get(n, n) for n in names}
        return sorted(names)
    return None


def _worker_main(conn, env_fns, info_keys=None) -> None:
    serve(conn, lambda: _Worker(env_fns, info_keys), _task_names)


def serve(conn, build: Callable[[], Any], names: Callable[[Any], list | None]) -> None:
    """A worker process' command loop, shared by these env workers and the rollout workers of
    data/workers.py: build the worker object, then answer each `(cmd, args)` from the pipe with
    `("ok", worker.cmd(*args))` or `("error", (message, traceback, names(worker)))`.

    Ctrl-C and SIGTERM are the main process' job: it finishes the meta-iteration (which needs
    these workers) and writes last.ckpt with their state. SLURM's scancel, preemption and time
    limit signal every process of a job step, workers included. The workers still stop when the
    main process closes them or dies (EOF below)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker, cmd, args = None, "info", ()
    while True:
        try:
            if worker is None:
                worker = build()
            conn.send(("ok", getattr(worker, cmd)(*args)))
        except Exception as exc:
            conn.send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                                 names(worker) if worker is not None else None)))
            if worker is None:  # building failed: nothing to serve
                return
        if cmd == "close":
            return
        try:
            cmd, args = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            with contextlib.suppress(Exception):
                worker.close()
            return


@contextlib.contextmanager
def child_env(**variables: str):
    """Set environment variables for processes started inside the block (spawned children
    inherit os.environ at start()); the parent's values are restored afterwards."""
    saved = {var: os.environ.get(var) for var in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


class ProcessVectorEnv(gym.vector.VectorEnv):
    """``SyncVectorEnv(env_fns, autoreset_mode=SAME_STEP)`` spread over worker processes.

    Args:
        env_fns: picklable thunks building the envs (e.g. ``functools.partial``).
        num_workers: worker processes; ``None`` = one per usable CPU; clamped to ``len(env_fns)``.
        context: multiprocessing start method.
        step_timeout: seconds to wait for any worker reply (startup included) before the
            env is closed and ``EnvFault`` (a ``RuntimeError``) raised.
        info_keys: the only ``infos`` keys sent back (top level and in ``final_info``, with
            their masks), e.g. ``EVAL_INFO_KEYS``; None: all of them, as SyncVectorEnv.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]], num_workers: int | None = None,
                 context: str = "spawn", step_timeout: float = 120.0,
                 info_keys: Collection[str] | None = None):
        self.info_keys = None if info_keys is None else tuple(info_keys)
        self._procs: list = []
        self._conns: list = []
        self._shms: list[SharedMemory] = []
        self._obs = None
        self._tasks: list = []
        self._fault: str | None = None  # why the env was closed by a worker failure
        self._in_flight = False  # step_async sent, replies not collected
        self._landed: tuple | None = None  # a step collected early, for step_wait
        self.closed = False
        self.num_envs = len(env_fns)
        if self.num_envs == 0:
            raise ValueError("ProcessVectorEnv needs at least one env_fn")
        if num_workers is None:
            num_workers = len(os.sched_getaffinity(0))
        self.num_workers = max(1, min(int(num_workers), self.num_envs))
        self.step_timeout = float(step_timeout)
        bounds = np.linspace(0, self.num_envs, self.num_workers + 1).round().astype(int)
        self._slices = [(int(bounds[w]), int(bounds[w + 1])) for w in range(self.num_workers)]
        try:
            self._start(mp.get_context(context), list(env_fns))
        except BaseException:
            self.close(terminate=True)
            raise

    def _start(self, ctx, env_fns) -> None:
        with child_env(**dict.fromkeys(_BLAS_VARS, "1")):
            for lo, hi in self._slices:
                parent_conn, child_conn = ctx.Pipe()
                proc = ctx.Process(target=_worker_main,
                                   args=(child_conn, env_fns[lo:hi], self.info_keys),
                                   name=f"ProcessVectorEnv-worker-{len(self._procs)}",
                                   daemon=True)
                self._conns.append(parent_conn)
                self._procs.append(proc)
                proc.start()
                child_conn.close()  # so a dead worker shows up as EOF on our end
        # Each worker builds its envs and replies with (obs space, action space, ...).
        replies = self._collect("init", range(self.num_workers))
        obs_space, act_space, metadata, render_mode, _ = replies[0]
        self._tasks = [reply[4] for reply in replies]  # for error messages about dead workers
        for w, (o, a, *_) in enumerate(replies):
            if o != obs_space or a != act_space:
                raise ValueError(f"worker {w} has spaces {o}, {a}; worker 0 has {obs_space}, "
                                 f"{act_space}")
        self.single_observation_space, self.single_action_space = obs_space, act_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(act_space, self.num_envs)
        if not (isinstance(self.observation_space, _ARRAY_SPACES)
                and isinstance(self.action_space, _ARRAY_SPACES)):
            raise TypeError("ProcessVectorEnv supports only Box/Discrete/MultiDiscrete/"
                            f"MultiBinary spaces, got {obs_space} and {act_space}")
        self.metadata = {**metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = render_mode

        space = self.observation_space
        obs_bytes = int(np.prod(space.shape)) * space.dtype.itemsize
        act_bytes = int(np.prod(self.action_space.shape)) * _ACTION_ITEMSIZE
        self._shms = [SharedMemory(create=True, size=max(1, n)) for n in (obs_bytes, act_bytes)]
        self._obs = np.ndarray(space.shape, space.dtype, buffer=self._shms[0].buf)
        self._run("attach", [(self._shms[0].name, self._shms[1].name, lo)
                             for lo, _ in self._slices])

    @property
    def worker_pids(self) -> tuple[int | None, ...]:
        return tuple(proc.pid for proc in self._procs)

    # ------------------------------------------------------------------ VectorEnv API
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None):
        self._ensure_open()
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"got {len(seed)} seeds for num_envs={self.num_envs}")
        mask = None
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = np.asarray(options.pop("reset_mask"))
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError("options['reset_mask'] must be a bool array of shape "
                                 f"({self.num_envs},) with at least one True, got {mask}")
        args = []
        for lo, hi in self._slices:
            if mask is None:
                args.append((seed[lo:hi], options))
            elif mask[lo:hi].any():  # SyncVectorEnv rejects an all-False mask: skip worker
                args.append((seed[lo:hi], {**options, "reset_mask": mask[lo:hi]}))
            else:
                args.append(None)  # untouched envs keep their last obs in shared memory
        infos = [info or {} for info in self._run("reset", args)]
        self._landed = None  # a step in flight before the reset is superseded by it
        return self._obs.copy(), merge_infos(infos, self._sizes)

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        """Send `actions` to the workers and return at once (gymnasium AsyncVectorEnv's API):
        the caller works while the envs step, then `step_wait()` returns what `step` would.
        Any other command sent before `step_wait` first waits for the step (kept for
        `step_wait`), so a checkpoint's `call` in between is safe."""
        self._ensure_open()
        if self._in_flight or self._landed is not None:
            raise RuntimeError("step_async called twice without step_wait")
        actions = np.asarray(actions)
        if actions.ndim == 0 or len(actions) != self.num_envs:
            raise ValueError(f"expected actions for {self.num_envs} envs, got shape "
                             f"{actions.shape}")
        if actions.dtype == object or actions.nbytes > self._shms[1].size:
            raise TypeError(f"actions of dtype {actions.dtype} and shape {actions.shape} "
                            "do not fit the shared action buffer")
        view = np.ndarray(actions.shape, actions.dtype, buffer=self._shms[1].buf)
        view[...] = actions
        del view
        self._send("step", [(actions.dtype.str, actions.shape[1:])] * self.num_workers)
        self._in_flight = True

    def step_wait(self):
        if self._landed is None:
            if not self._in_flight:
                raise RuntimeError("step_wait called without step_async")
            self._land()
        result, self._landed = self._landed, None
        return result

    def _land(self) -> None:
        """Collect the step in flight into `_landed`."""
        self._in_flight = False
        replies = self._collect("step", range(self.num_workers))
        rewards, terminations, truncations, infos = zip(*replies, strict=True)
        self._landed = (self._obs.copy(), np.concatenate(rewards), np.concatenate(terminations),
                        np.concatenate(truncations), merge_infos(infos, self._sizes))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` on every env with the same arguments (like SyncVectorEnv.call)."""
        return self._forward("call", (name, *args), kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self._forward("get_attr", (name,))

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, list | tuple):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"got {len(values)} values for num_envs={self.num_envs}")
        self._run("forward", [("set_attr", (name, list(values[lo:hi])), {})
                              for lo, hi in self._slices])

    def render(self) -> tuple[Any, ...]:
        return self._forward("render", ())

    def close_extras(self, terminate: bool = False, **kwargs: Any) -> None:
        """Stop the workers (SIGKILL at once if ``terminate``), release pipes and shared memory.

        Called once by ``close()``; ``terminate=True`` is used after a worker died or hung
        and by ``__del__``.
        """
        if not terminate:
            for conn, proc in zip(self._conns, self._procs, strict=False):
                with contextlib.suppress(Exception):
                    if proc.is_alive():
                        conn.send(("close", ()))
        deadline = time.monotonic() + (0.0 if terminate else min(self.step_timeout, 10.0))
        for proc in self._procs:
            if proc.pid is None:  # never started
                continue
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive() and not terminate:
                proc.terminate()
                proc.join(timeout=1.0)
            if proc.is_alive():  # hung, stopped (ignores SIGTERM) or terminate=True
                proc.kill()
                proc.join()
            proc.close()  # releases the sentinel fds now rather than at garbage collection
        for conn in self._conns:
            conn.close()
        self._obs = None  # drop the view first: SharedMemory.close() refuses exported buffers
        for shm in self._shms:
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        self._procs, self._conns, self._shms = [], [], []

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close(terminate=True)

    # ------------------------------------------------------------------ plumbing
    @property
    def _sizes(self) -> list[int]:
        return [hi - lo for lo, hi in self._slices]

    def _ensure_open(self) -> None:
        if self.closed and self._fault:
            raise EnvFault(f"ProcessVectorEnv was closed by an earlier fault: {self._fault}")
        if self.closed:
            raise RuntimeError("ProcessVectorEnv is closed")

    def _forward(self, method: str, args: tuple, kwargs: dict | None = None) -> tuple:
        """Same SyncVectorEnv method on every worker; results concatenated in env order."""
        replies = self._run("forward", [(method, args, kwargs or {})] * self.num_workers)
        return tuple(x for reply in replies for x in reply)

    def _run(self, cmd: str, args: list) -> list:
        """Send ``cmd`` to workers whose args are not None, then collect all replies."""
        self._ensure_open()
        if self._in_flight:  # the step's replies come first on every pipe
            self._land()
        active = self._send(cmd, args)
        replies = self._collect(cmd, active)
        return [replies.pop(0) if a is not None else None for a in args]

    def _send(self, cmd: str, args: list) -> list[int]:
        active = [w for w, a in enumerate(args) if a is not None]
        for w in active:
            try:
                self._conns[w].send((cmd, args[w]))
            except OSError as exc:  # BrokenPipeError: the worker is gone
                self._fail(w, cmd, unreachable(self._procs[w], exc))
        return active

    def _collect(self, cmd: str, workers) -> list:
        return collect_replies(self, cmd, workers)

    def _recv(self, w: int, cmd: str):
        conn, proc = self._conns[w], self._procs[w]
        deadline = time.monotonic() + self.step_timeout
        # Poll in short slices so a dead worker is noticed even if its pipe end lingers.
        while not conn.poll(max(0.0, min(1.0, deadline - time.monotonic()))):
            if not proc.is_alive():
                self._fail(w, cmd, f"worker process died (exit code {proc.exitcode})")
            if time.monotonic() >= deadline:
                self._fail(w, cmd, f"no reply within step_timeout={self.step_timeout}s")
        try:
            return conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=1.0)
            self._fail(w, cmd, f"worker process died (exit code {proc.exitcode})")

    def _describe(self, w: int, tasks: list | None = None) -> str:
        lo, hi = self._slices[w]
        tasks = tasks or (self._tasks[w] if w < len(self._tasks) else None)
        return (f"ProcessVectorEnv worker {w} (envs {list(range(lo, hi))}, "
                f"task_name {tasks if tasks else 'unknown'})")

    def _fail(self, w: int, cmd: str, why: str):
        """A worker died or hung: the pipes are out of sync, so shut everything down."""
        message = f"{self._describe(w)} failed in {cmd!r}: {why}; the vector env is now closed"
        self._fault = message
        self.close(terminate=True)
        raise EnvFault(message)


def make_vector_env(fns: list, strategy: str, num_workers: int | None,
                    info_keys: Collection[str] | None = None) -> gym.vector.VectorEnv:
    """`process`: our ProcessVectorEnv, one worker per core each stepping several envs, sending
    back only `info_keys` (None: all); `sync`/`async`: gymnasium's, for comparison (see
    benchmarks/throughput.py), with every info key."""
    same_step = gym.vector.AutoresetMode.SAME_STEP
    if strategy == "sync":
        envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=same_step)
    elif strategy == "async":
        envs = gym.vector.AsyncVectorEnv(fns, autoreset_mode=same_step)
    elif strategy == "process":
        envs = ProcessVectorEnv(fns, num_workers=num_workers, info_keys=info_keys)
    else:
        raise ValueError(f"vector_strategy must be process, sync or async; got {strategy!r}")
    # Meta-World's CheckpointWrapper ids are "<class>_<env_id>", the same for every sub-env of a
    # class, so load_checkpoint would give all of them the first one's state. One id per slot:
    envs.set_attr("env_id", [f"slot{i}" for i in range(envs.num_envs)])
    return envs
