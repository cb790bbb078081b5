"""A non-finite loss is caught before the optimizer step: the update is skipped, and after
`max_nonfinite_steps` in a row the run stops with a clear message and an intact checkpoint."""

import pytest
import torch

import metarl_lightning.algorithms.functional as F
from train import train


def test_nonfinite_updates_are_skipped_then_stop_the_run(tiny_cfg, tmp_path, monkeypatch):
    real = F.ppo_clip_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 2 else loss), stats  # iteration 1 is clean

    monkeypatch.setattr(F, "ppo_clip_loss", poisoned)
    cfg = tiny_cfg("trainer.max_steps=10", "algorithm.max_nonfinite_steps=3")
    with pytest.raises(FloatingPointError, match="non-finite loss .* 3 updates in a row"):
        train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1  # the clean iteration, nothing after it
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
