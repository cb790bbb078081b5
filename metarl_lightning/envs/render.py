"""Render a recorded episode to GIF in a separate process (no torch here).

MuJoCo picks its GL backend (`MUJOCO_GL`) when it is first imported, and importing it with a
backend whose library is missing fails outright; so rendering happens in a spawned process
with its own `MUJOCO_GL`, replaying actions that the training process recorded on an identical
env (same thunk, same seed: same task and the same deterministic physics).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from collections.abc import Callable

import numpy as np

from metarl_lightning.envs.vector import child_env


def _replay(env_fn: Callable, episodes: list[np.ndarray], path: str, every: int,
            fps: int) -> None:
    from PIL import Image

    env = env_fn()
    env.get_wrapper_attr("sample_tasks")()
    frames = []
    for k, actions in enumerate(episodes):
        env.reset()
        last = k == len(episodes) - 1
        for t, action in enumerate(actions):
            env.step(action)
            if last and t % every == 0:
                frames.append(Image.fromarray(np.asarray(env.render())[::-1]))  # flip: GL origin
    env.close()
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                   loop=0)


def render_episode_gif(env_fn: functools.partial, episodes: list[np.ndarray], path: str,
                       *, size: int = 240, every: int = 4, fps: int = 25,
                       gl: str | None = None, timeout: float = 300.0) -> str | None:
    """Replay `episodes` (action arrays; the last one is filmed) and write a GIF. Returns None
    on success, else a one-line reason (no renderer, timeout)."""
    gl = gl or os.environ.get("MUJOCO_GL") or "osmesa"
    fn = functools.partial(env_fn.func, *env_fn.args, **{
        **env_fn.keywords, "render_mode": "rgb_array", "width": size, "height": size})
    gl_vars = {"MUJOCO_GL": gl, **({"PYOPENGL_PLATFORM": gl} if gl in ("osmesa", "egl") else {})}
    with child_env(**gl_vars):
        proc = mp.get_context("spawn").Process(target=_replay, args=(fn, episodes, path, every,
                                                                     fps))
        proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return f"rendering timed out after {timeout:.0f} s"
    if proc.exitcode != 0 or not os.path.exists(path):
        return (f"MuJoCo could not render with MUJOCO_GL={gl} (CPU: install Debian's libosmesa6 "
                "and use osmesa; GPU: MUJOCO_GL=egl)")
    return None
