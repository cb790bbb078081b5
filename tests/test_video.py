"""Rollout videos: a GIF where MuJoCo can render, a one-line reason (never a crash) where not."""

import numpy as np
from PIL import Image

from metarl_lightning import envs as mw
from metarl_lightning.envs.render import render_episode_gif


def _fn():
    info = mw.describe("ML1", "reach-v3")
    return mw.make_env_fns(info, split="test", meta_batch_size=1, benchmark_seed=1, env_seed=1,
                           max_episode_steps=12)[0]


def test_video_gif_or_clear_reason(tmp_path):
    episodes = [np.zeros((12, 4), np.float32), np.full((12, 4), 0.5, np.float32)]
    path = tmp_path / "v.gif"
    problem = render_episode_gif(_fn(), episodes, str(path), gl="osmesa", size=64, every=3)
    if problem is None:
        with Image.open(path) as gif:
            assert gif.n_frames == 4 and gif.size == (64, 64)
            assert np.asarray(gif.convert("RGB")).std() > 0  # not a blank frame
    else:  # no OSMesa on this machine: the reason names the fix
        assert "libosmesa6" in problem and not path.exists()


def test_unusable_renderer_is_reported_not_raised(tmp_path):
    problem = render_episode_gif(_fn(), [np.zeros((3, 4), np.float32)], str(tmp_path / "v.gif"),
                                 gl="no-such-backend", size=32)
    assert problem is not None and "could not render" in problem


def test_train_with_callbacks_video_films_the_runs_benchmark(tmp_path):
    """The callback builds its env from the run's benchmark (trainer.datamodule.info): a tiny
    run with callbacks=video ends with a GIF, or without one where MuJoCo cannot render."""
    from tests.conftest import TINY, compose_cfg
    from train import train

    cfg = compose_cfg(TINY + ["callbacks=video", "callbacks.video.adaptation_episodes=1",
                              "callbacks.video.size=32", "trainer.max_steps=1"], tmp_path)
    _, objs = train(cfg)
    video = next(c for c in objs["trainer"].callbacks if type(c).__name__ == "VideoCallback")
    assert video.env_fn.keywords["max_episode_steps"] == cfg.benchmark.max_episode_steps
    gifs = list((tmp_path / "videos").glob("video_step1.gif"))
    assert len(gifs) == 1 or video.disabled
