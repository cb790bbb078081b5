"""Run identity for loggers and reports: a readable run name, and a config group that runs
differing only in their seed share (W&B `group`, the report's aggregation key).

W&B (conf/logger/wandb.yaml): `name`, `group` and `tags` left null are filled from the config;
`entity`, `job_type` pass through to `wandb.init`. A resumed run (`ckpt_path=`) reattaches to
the W&B run id saved in the checkpoint (`WandbRunId`), as metaworld-algorithms does.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

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


def config_group(cfg: Any) -> str:
    """`<task_name>/<method>/<benchmark>/<hash of the config without seed>`."""
    from metarl_lightning.runlog import benchmark_label

    c = _plain(cfg)
    key = {k: c.get(k) for k in _GROUP_KEYS}
    key["trainer"] = {k: c.get("trainer", {}).get(k) for k in _GROUP_TRAINER_KEYS}
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
        loggers.append(instantiate(entry))
    return loggers


class WandbRunId(L.Callback):
    """Saves the W&B run id into every checkpoint, so that `ckpt_path=` resumes the same run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version
