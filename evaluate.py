"""Evaluate a checkpoint under Meta-World's official protocol.

`python evaluate.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt [split=train]`
logs a per-task table (console and evaluate.log) and writes eval.json (success per task and per
round, seed, protocol, episode length) and success.png into its Hydra run dir.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metarl_lightning import config as _schema  # registers eval_schema; check_eval
from metarl_lightning import runlog
from metarl_lightning.build import benchmark_info
from metarl_lightning.checkpoints import load_run
from metarl_lightning.cli import check_overrides
from metarl_lightning.evaluation import Evaluator
from metarl_lightning.evaluation.plots import plot_eval
from metarl_lightning.types import ConfigError

log = logging.getLogger("evaluate")
runlog.quiet_warnings()  # before the env workers start


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    runlog.setup_logging()
    _schema.check_eval(cfg.eval)
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.benchmark).items() if v is not None}
    module, run_cfg, ckpt = load_run(cfg.ckpt_path, overrides)
    b, e = run_cfg.benchmark, cfg.eval
    evaluator = Evaluator(
        benchmark_info(run_cfg), cfg.split, cfg.seed, meta_batch_size=e.meta_batch_size,
        num_evals=e.num_evals, adaptation_episodes=e.adaptation_episodes,
        evaluation_episodes=e.evaluation_episodes, mt_episodes=e.mt_episodes,
        deterministic=e.deterministic, num_workers=cfg.num_workers,
        vector_strategy=cfg.vector_strategy,
    )
    # the evaluator's split: MT has no test split and always scores its training tasks
    log.info("evaluating %s (%s on %s, meta-iteration %d, %s env steps) on the %s split, seed %d",
             cfg.ckpt_path, module.name, runlog.benchmark_label(b), int(ckpt.get("global_step", 0)),
             f"{int(ckpt.get('env_steps', 0)):,}", evaluator.split, cfg.seed)
    try:
        result = evaluator.run(module)
    finally:
        evaluator.close()
    protocol = {**OmegaConf.to_container(e), "meta_batch_size": evaluator.meta_batch_size,
                "max_episode_steps": int(b.max_episode_steps)}
    if evaluator.info.kind == "mt":  # what the MT protocol actually ran (no adaptation, 1 round)
        protocol = {k: v for k, v in protocol.items()
                    if k not in ("num_evals", "adaptation_episodes", "evaluation_episodes")}
    report = {**result.as_dict(), "env_name": b.env_name, "seed": int(cfg.seed),
              "train_seed": int(run_cfg.get("seed", -1)),
              "method": module.name, "max_episode_steps": int(b.max_episode_steps),
              "env_steps_trained": int(ckpt.get("env_steps", 0)),
              "meta_iterations": int(ckpt.get("global_step", 0)),
              "ckpt_path": os.path.abspath(cfg.ckpt_path), "protocol": protocol}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    plot_eval(report, out_dir / "success.png")
    log.info("\n%s", table(report))
    log.info("wrote %s and %s", out_dir / "eval.json", out_dir / "success.png")
    return report


def table(report: dict) -> str:
    width = max(len(t) for t in report["per_task"]) + 2
    rounds = report.get("per_task_rounds", {})
    spread = len(report.get("per_round", [])) > 1
    lines = [f"{report['benchmark']} {report['split']} split, "
             f"{report['env_steps_trained']:,} env steps trained",
             f"{'task':<{width}}success" + ("  (min-max over rounds)" if spread else "")]
    for task, v in report["per_task"].items():
        r = rounds.get(task, [])
        lines.append(f"{task:<{width}}{v:.3f}" + (f"  ({min(r):.2f}-{max(r):.2f})" if spread else ""))
    lines.append(f"{'mean':<{width}}{report['success_rate']:.3f}   "
                 f"(mean return {report['return']:.1f})")
    if spread:
        lines.append("per round: " + " ".join(f"{x:.3f}" for x in report["per_round"]))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    try:
        report = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        runlog.to_file(logging.ERROR, f"error: {err}")
        sys.exit(2)
    return report["success_rate"]


if __name__ == "__main__":
    check_overrides("evaluate")
    main()
