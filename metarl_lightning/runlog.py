"""What a run tells its user, on the console and in `<run dir>/<task_name>.log`.

Hydra's job logging configures the root logger with a console and a file handler
(`hydra/job_logging`); everything here logs through Python `logging`, so it reaches both.
Lightning installs its own console handler on `lightning.pytorch` when it is imported before
Hydra has configured logging (always, here), which kept its messages out of the file:
`setup_logging` hands them to the root handlers instead. It also silences what a user cannot act
on. `log_start` / `log_end` write the summaries; `print_config_tree` the resolved config.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import ModelSummary
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("metarl_lightning")

# (message regex, why it is silenced). Each is emitted on every run and asks nothing of the user.
_SILENCED_WARNINGS = (
    (".*dataloader_iter.*", "we use the dataloader_iter training_step on purpose (algorithms/base.py)"),
    (".*LeafSpec.*", "torch pytree deprecation inside Lightning"),
    ("Using ModelCheckpoint with manual optimization",
     "a Lightning Step is one whole meta-iteration: the checkpoint holds its post-update state, "
     "which is the state to resume from"),
)
# gymnasium warns at every Box construction that Meta-World's float64 bounds become float32,
# twice per env, in each env worker. Spawned workers read PYTHONWARNINGS at start-up (and
# multiprocessing passes -W options on), so the filter travels with it. The warning is raised
# with stacklevel pointing at gymnasium.spaces.box.
_WORKER_FILTER = "ignore::UserWarning:gymnasium.spaces.box"


class _QuietFilter(logging.Filter):
    """Drops Lightning's litlogger/litmodels advertisements, its note on `weights_only` (it
    loads only the checkpoints this run wrote itself) and its note that our model summary
    replaces its default one."""

    DROP = ("litlogger", "litmodels", "`weights_only` was not set",
            "Skipping setting a default `ModelSummary`")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(s in msg for s in self.DROP)


class QuietModelSummary(ModelSummary):
    """Lightning's model summary without its FLOPs column and 'Total Flops' line: always 0 here
    (the summary runs no forward pass: our modules have no `example_input_array`)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size,
                  total_training_modes, total_flops, **kwargs) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        cols = [c for c in summary_data if c[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size,
                                      total_training_modes, total_flops, *cols)
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info(
            "\n" + "\n".join(ln for ln in table.splitlines() if "Total Flops" not in ln))


def quiet_warnings() -> None:
    for message, _why in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=UserWarning, module="gymnasium.spaces.box")
    current = os.environ.get("PYTHONWARNINGS", "")
    if _WORKER_FILTER not in current:
        os.environ["PYTHONWARNINGS"] = f"{current},{_WORKER_FILTER}" if current else _WORKER_FILTER


def setup_logging() -> None:
    """Idempotent. Under Hydra (root has handlers): Lightning's records go to the root handlers
    (console and the run's log file), and so do Python warnings. Without Hydra (tests calling
    `train(cfg)`): Lightning keeps its own console handler, filtered the same way."""
    quiet_warnings()
    root = logging.getLogger()
    targets = list(root.handlers)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        if root.handlers:
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.propagate = True
        else:
            targets += lg.handlers
    for h in targets:
        if not any(isinstance(f, _QuietFilter) for f in h.filters):
            h.addFilter(_QuietFilter())
    if root.handlers:
        logging.captureWarnings(True)  # warnings that remain reach the log file too
    log.setLevel(logging.INFO)


def to_file(level: int, msg: str) -> None:
    """A record for the run's log file only: for what is already on the console (stderr)."""
    record = log.makeRecord(log.name, level, __file__, 0, msg, (), None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


# --- summaries ----------------------------------------------------------------------------------
def benchmark_label(benchmark: Any) -> str:
    """'ML1 reach-v3', 'MT10'."""
    name, env = benchmark["name"], benchmark.get("env_name")
    return f"{name} {env}" if env and name.endswith("1") else name


def log_start(cfg: DictConfig, method: str, num_params: int, resume_from: str | None) -> None:
    b = cfg.benchmark
    log.info("run: %s on %s, seed %d, %s policy parameters", method, benchmark_label(b), cfg.seed,
             f"{num_params:,}")
    log.info("budget: %d meta-iterations of %d task slots x %d-step episodes%s",
             cfg.trainer.max_steps, b.meta_batch_size, b.max_episode_steps,
             f", at most {cfg.trainer.max_time}" if cfg.trainer.get("max_time") else "")
    log.info("output dir: %s", os.path.abspath(cfg.paths.output_dir))
    if resume_from:
        log.info("resuming from %s", resume_from)


def checkpoints_in(output_dir: str) -> dict[str, int]:
    """{path: meta-iteration} of the checkpoints that exist in a run dir."""
    import torch

    found = {}
    for path in sorted(Path(output_dir, "checkpoints").glob("*.ckpt")):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            found[str(path)] = int(ckpt.get("global_step", -1))
        except Exception:  # noqa: BLE001  (an unreadable file is reported, not trusted)
            found[str(path)] = -1
    return found


def log_end(status: str, trainer: Any, module: Any, output_dir: str, seconds: float,
            resume_cmd: str | None = None) -> None:
    """status: 'finished', or 'stopped by SIGTERM' etc. Only checkpoints that exist are named."""
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    h, rem = divmod(int(seconds), 3600)
    level = (logging.INFO if status == "finished" else
             logging.ERROR if status.startswith("failed") else logging.WARNING)
    log.log(level, "%s after %d meta-iterations, %s env steps, wall time %d:%02d:%02d", status,
             trainer.global_step, f"{int(getattr(module, 'env_steps', 0)):,}", h, rem // 60,
             rem % 60)
    if "val/success_rate" in m:
        log.info("final val/success_rate %.3f (meta-test at %s env steps); train/success_post %s",
                 m["val/success_rate"], f"{int(m.get('val/env_steps', 0)):,}",
                 f"{m['train/success_post']:.3f}" if "train/success_post" in m else "n/a")
    elif "train/success_post" in m:
        log.info("train/success_post %.3f (no meta-test was run)", m["train/success_post"])
    ckpts = checkpoints_in(output_dir)
    for path, step in ckpts.items():
        log.info("checkpoint %s (meta-iteration %s)", path, step if step >= 0 else "unreadable")
    if not ckpts:
        log.info("no checkpoint was written")
    last = os.path.join(output_dir, "checkpoints", "last.ckpt")
    if resume_cmd and last in ckpts:
        log.warning("resume with: %s ckpt_path=%s", resume_cmd, last)


# --- config tree --------------------------------------------------------------------------------
_ORDER = ("benchmark", "algorithm", "model", "trainer", "data", "eval", "callbacks", "logger",
          "paths")


def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None) -> None:
    """The resolved config as a rich tree (as lightning-hydra-template's `print_config_tree`),
    on the console and in `save_to`."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in _ORDER if f in cfg] + [f for f in cfg if f not in _ORDER]
    for f in fields:
        node = cfg[f]
        text = (OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig)
                else str(node))
        tree.add(f, style="dim", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as f:
            rich.print(tree, file=f)


# --- per-task training success ----------------------------------------------------------------
def per_task_success(trainer: Any, stats: dict, device: Any = None) -> dict[str, float]:
    """train/success_post/<task>: the collector's per-slot success after adaptation, averaged per
    task class (slot i belongs to class i // k, `envs.task_ids`; under DDP rank r holds global
    slots r, r+W, ...). Empty for one-class benchmarks (ML1/MT1: it is train/success_post)."""
    from metarl_lightning.envs import task_ids

    slots = stats.get("success_post_per_slot")
    dm = getattr(trainer, "datamodule", None)
    info = getattr(dm, "info", None)
    if slots is None or info is None or len(info.train_classes) < 2:
        return {}
    rank, world = getattr(dm, "rank", 0), getattr(dm, "world_size", 1)
    ids = task_ids(info, dm.meta_batch_size, "train")[rank::world]
    n = len(info.train_classes)
    sums = np.bincount(ids, weights=np.asarray(slots, np.float64), minlength=n)
    counts = np.bincount(ids, minlength=n).astype(np.float64)
    if trainer.world_size > 1:
        import torch

        both = trainer.strategy.reduce(torch.tensor(np.concatenate([sums, counts]), device=device),
                                       reduce_op="sum")
        sums, counts = np.split(both.cpu().numpy(), 2)
    return {f"train/success_post/{c}": float(s / k)
            for c, s, k in zip(info.train_classes, sums, counts) if k > 0}
