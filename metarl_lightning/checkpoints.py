"""Loading checkpoints written by train.py, with one-line errors for the usual mistakes."""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf

from metarl_lightning.build import benchmark_info, build_module
from metarl_lightning.types import ConfigError


def load_run(ckpt_path: str, benchmark_overrides: dict | None = None):
    """(module, run_config, checkpoint) from a train.py checkpoint; plain `torch.load` with
    `weights_only=True` (the checkpoint holds no pickled objects)."""
    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise ConfigError(f"checkpoint {ckpt_path!r} not found; pass ckpt_path=<run dir>/"
                          "checkpoints/last.ckpt (or best.ckpt) of a train.py run")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user error)
        raise ConfigError(f"checkpoint {ckpt_path!r} is unreadable or corrupt "
                          f"({type(err).__name__}); use another .ckpt, e.g. last.ckpt") from None
    cfg = ckpt.get("run_config")
    if not cfg:
        raise ConfigError(f"checkpoint {ckpt_path!r} has no run_config; it was not written by "
                          "train.py")
    cfg = OmegaConf.create(cfg)
    for key, value in (benchmark_overrides or {}).items():
        cfg.benchmark[key] = value
    module = build_module(cfg, benchmark_info(cfg))
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"checkpoint {ckpt_path!r} does not match the model/benchmark "
                          f"({first[1].strip() if len(first) > 1 else first[0]}); evaluate with "
                          "the benchmark and model it was trained with") from None
    module.env_steps = int(ckpt.get("env_steps", 0))
    module.eval()
    return module, cfg, ckpt
