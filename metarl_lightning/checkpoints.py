"""Writing checkpoints atomically, and loading them with one-line errors for the usual mistakes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import OmegaConf

from metarl_lightning.build import benchmark_info, build_module
from metarl_lightning.config import added_keys
from metarl_lightning.types import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files are replaced atomically: a process killed mid-save leaves the previous file.

    Lightning's own save (`cloud_io._atomic_save`) writes through an fsspec transaction whose
    temp file comes from `tempfile.mkstemp()`, i.e. lives in $TMPDIR, and is `shutil.move`d into
    place: when $TMPDIR is another filesystem (tmpfs, a node-local disk on clusters) that move is a
    copy into the destination, and nothing is fsynced, so a crash can leave a truncated last.ckpt.
    Here the temp file sits next to the target, is fsynced, then `os.replace`d (atomic on POSIX).
    Remote paths (s3://...) fall back to Lightning's implementation.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def read_checkpoint(ckpt_path: str | None) -> dict:
    """The checkpoint's contents via plain `torch.load(weights_only=True)` (train.py checkpoints
    hold no pickled objects); ConfigError for a missing or unreadable file."""
    if not ckpt_path or not os.path.isfile(ckpt_path):
        raise ConfigError(f"checkpoint {ckpt_path!r} not found; pass ckpt_path=<run dir>/"
                          "checkpoints/last.ckpt of a train.py run")
    try:
        return torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user error)
        raise ConfigError(f"checkpoint {ckpt_path!r} is unreadable or corrupt "
                          f"({type(err).__name__}); use another .ckpt, e.g. last.ckpt") from None


def check_resumable(ckpt_path: str, module: torch.nn.Module) -> None:
    """Before Lightning restores `ckpt_path` into `module`: the same parameter names and shapes,
    or a one-line ConfigError saying what differs (instead of load_state_dict's traceback)."""
    ckpt = read_checkpoint(ckpt_path)
    theirs, ours = ckpt.get("state_dict"), module.state_dict()
    if theirs is None or "run_config" not in ckpt:
        raise ConfigError(f"checkpoint {ckpt_path!r} was not written by train.py (no state_dict "
                          "or run_config); pass a last.ckpt of a train.py run")
    diff = [f"{k} missing from the checkpoint" for k in ours if k not in theirs]
    diff += [f"{k} not in this model" for k in theirs if k not in ours]
    diff += [f"{k} is {tuple(theirs[k].shape)} in the checkpoint, {tuple(v.shape)} here"
             for k, v in ours.items() if k in theirs and theirs[k].shape != v.shape]
    if diff:
        was = ckpt["run_config"]
        raise ConfigError(
            f"checkpoint {ckpt_path!r} does not fit this model/benchmark ({diff[0]}"
            f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); it was trained with "
            f"benchmark={was['benchmark']['name']} {_model_summary(was['model'])}: resume with "
            "the same settings (its run dir's .hydra/config.yaml) or drop ckpt_path")


def _model_summary(model: dict) -> str:
    return " ".join(f"model.{k}={v}" for k, v in model.items() if not k.startswith("_"))


def load_run(ckpt_path: str, benchmark_overrides: dict | None = None):
    """(module, run_config, checkpoint) from a train.py checkpoint."""
    ckpt = read_checkpoint(ckpt_path)
    cfg = ckpt.get("run_config")
    if not cfg:
        raise ConfigError(f"checkpoint {ckpt_path!r} has no run_config; it was not written by "
                          "train.py")
    cfg = OmegaConf.create(cfg)
    for key, value in added_keys(cfg.algorithm).items():
        cfg.algorithm[key] = value
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
