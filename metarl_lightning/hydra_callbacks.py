"""Hydra callbacks registered in conf/train.yaml (`hydra.callbacks`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FIRST = "first"


class KeepFirstConfig(Callback):
    """A run resumed in its own dir (`ckpt_path=<dir>/checkpoints/last.ckpt hydra.run.dir=<dir>`)
    makes Hydra rewrite `<dir>/.hydra/` with the resuming command; the config the run started
    with is copied to `<dir>/.hydra/first/` before that (once: later resumes keep it), so the
    recipe that produced the checkpoint is not lost. `scripts/publish_run.py` reads it from there.

    `on_run_start` is the last hook before Hydra writes `.hydra/` (`on_job_start` runs after);
    multirun jobs write to fresh dirs and are left alone."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        subdir = OmegaConf.select(config, "hydra.output_subdir")
        if config.get("ckpt_path") is None or subdir is None:
            return
        hydra_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))) / subdir
        first = hydra_dir / FIRST
        if first.exists() or not (hydra_dir / "config.yaml").is_file():
            return
        first.mkdir()
        for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
            if (hydra_dir / name).is_file():
                shutil.copy2(hydra_dir / name, first / name)
        log.info("resuming in %s: its first config kept in %s", hydra_dir.parent, first)
