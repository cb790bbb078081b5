"""Run identity for loggers and reports: a readable run name, and a config group that runs
differing only in their seed share (W&B `group`, the report's aggregation key).

W&B (conf/logger/wandb.yaml): `name`, `group` and `tags` left null are filled from the config;
`entity`, `job_type` pass through to `wandb.init`. A resumed run (`ckpt_path=`) reattaches to
the W&B run id saved in the checkpoint (`WandbRunId`), as metaworld-algorithms does.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf, open_dict

from metarl_lightning.config import added_keys

# The parts of a run config that change its results; the seed, where it ran (paths, devices,
# workers), logging and callbacks do not. `task_name` names the experiment recipe.
_GROUP_KEYS = ("task_name", "benchmark", "model", "algorithm")
_GROUP_TRAINER_KEYS = ("max_steps", "max_time")


def method_name(algorithm: Any) -> str:
    """'maml_ppo' (the class's `name`, i.e. the conf/algorithm choice)."""
    target = algorithm["_target_"]
    try:
        return get_class(target).name
    except Exception:  # noqa: BLE001  (a report may read runs of a method no longer installed)
        return target.rsplit(".", 1)[-1].lower()


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _without_nulls(x: Any) -> Any:
    """x with every null-valued mapping entry dropped, recursively."""
    if isinstance(x, dict):
        return {k: _without_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_nulls(v) for v in x]
    return x


def config_group(cfg: Any) -> str:
    """`<task_name>/<method>/<benchmark>/<hash of the config without seed>`.

    A key added to the config later must not split a run made before it from the same recipe run
    after it: null-valued keys (whose null keeps the old behaviour, e.g. `model.log_std_max`) are
    left out of the hash, and keys added with a value are filled in as `checkpoints.load_run`
    fills them (`config.added_keys`). A key set to another value still changes the group."""
    from metarl_lightning.runlog import benchmark_label

    c = _plain(cfg)
    c = {**c, "algorithm": {**c["algorithm"], **added_keys(c["algorithm"])}}
    key = {k: c.get(k) for k in _GROUP_KEYS}
    key["trainer"] = {k: c.get("trainer", {}).get(k) for k in _GROUP_TRAINER_KEYS}
    key = _without_nulls(key)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:6]
    bench = benchmark_label(c["benchmark"]).replace(" ", "-")
    return f"{c.get('task_name', 'train')}/{method_name(c['algorithm'])}/{bench}/{digest}"


def run_name(cfg: Any) -> str:
    """`<task_name>/<method>/<benchmark>/s<seed>`."""
    group = config_group(cfg)
    return f"{group.rsplit('/', 1)[0]}/s{_plain(cfg)['seed']}"


def build_loggers(cfg: DictConfig, resume_ckpt: dict | None = None) -> list:
    """Instantiate `cfg.logger`'s entries; the W&B one gets its name, group, tags and (on resume)
    the checkpoint's run id."""
    loggers = []
    for entry in (cfg.logger or {}).values():
        if entry is None or "_target_" not in entry:
            continue
        if entry._target_.endswith("WandbLogger"):
            entry = OmegaConf.create(OmegaConf.to_container(entry, resolve=True))
            with open_dict(entry):
                entry.name = entry.get("name") or run_name(cfg)
                entry.group = entry.get("group") or config_group(cfg)
                group = config_group(cfg).split("/")
                entry.tags = list(dict.fromkeys([*(entry.get("tags") or []), *group[:3]]))
                run_id = (resume_ckpt or {}).get("wandb_run_id")
                if run_id and not entry.get("id"):
                    entry.id, entry.resume = run_id, "allow"
        resumed_at = (resume_ckpt or {}).get("env_steps")
        if entry._target_ == f"{__name__}.CSVLogger" and resumed_at is not None:
            loggers.append(instantiate(entry, resume_env_steps=int(resumed_at)))
            continue
        loggers.append(instantiate(entry))
    return loggers


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, continued by a resumed run instead of wiped. Lightning deletes
    metrics.csv when a logger starts in a non-empty dir, so a resume with `ckpt_path=` in the
    run's own dir (what the resume hint says) kept only the rows after the checkpoint: the MT10
    MTMHSAC run lost its first 1.1e6 env steps of curves that way. With `resume_env_steps` (the
    checkpoint's, set by build_loggers) the rows up to that env step are kept, those logged after
    it (iterations a crash lost with the checkpoint) dropped, and the new rows appended."""

    def __init__(self, *args: Any, resume_env_steps: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._resume_env_steps = resume_env_steps

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None or self._resume_env_steps is None:
            return super().experiment
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        header, kept = rows_until(path, self._resume_env_steps)
        writer = super().experiment  # Lightning's writer deletes the old file here
        if header:
            writer.metrics_keys = sorted(header)
            with open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(kept)
        return writer


def rows_until(path: str, env_steps: int) -> tuple[list[str], list[dict]]:
    """(header, rows) of a metrics.csv up to `env_steps`: a row's env step is its
    train/env_steps or val/env_steps; rows without one are kept until the first row past it."""
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, kept = list(reader.fieldnames or []), []
        for row in reader:
            at = row.get("train/env_steps") or row.get("val/env_steps")
            if at not in (None, "") and float(at) > env_steps:
                break
            kept.append(row)
    return header, kept


class WandbRunId(L.Callback):
    """Saves the W&B run id into every checkpoint, so that `ckpt_path=` resumes the same run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version
