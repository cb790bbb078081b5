"""Evaluate a checkpoint under Meta-World's official protocol.

`python evaluate.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt [split=train]`
prints a per-task table and writes eval.json and success.png into its Hydra run dir.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metarl_lightning import config as _schema  # noqa: F401  (registers eval_schema)
from metarl_lightning.build import recurrent_info_in_obs
from metarl_lightning.checkpoints import load_run
from metarl_lightning.cli import check_overrides
from metarl_lightning.config import BenchmarkConfig
from metarl_lightning.evaluation import Evaluator
from metarl_lightning.types import ConfigError


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.benchmark).items() if v is not None}
    module, run_cfg, ckpt = load_run(cfg.ckpt_path, overrides)
    b, e = run_cfg.benchmark, cfg.eval
    evaluator = Evaluator(
        b.name, b.env_name, b.use_one_hot, cfg.split, cfg.seed,
        meta_batch_size=e.meta_batch_size, max_episode_steps=b.max_episode_steps,
        num_evals=e.num_evals, adaptation_episodes=e.adaptation_episodes,
        evaluation_episodes=e.evaluation_episodes, mt_episodes=e.mt_episodes,
        deterministic=e.deterministic, reward_function_version=b.reward_function_version,
        num_workers=cfg.num_workers, vector_strategy=cfg.vector_strategy,
        recurrent_info_in_obs=recurrent_info_in_obs(run_cfg),
        fast_step=b.get("fast_step", BenchmarkConfig.fast_step),  # runs from before the key existed
    )
    try:
        result = evaluator.run(module)
    finally:
        evaluator.close()
    report = {**result.as_dict(), "env_name": b.env_name,
              "env_steps_trained": int(ckpt.get("env_steps", 0)),
              "meta_iterations": int(ckpt.get("global_step", 0)),
              "ckpt_path": os.path.abspath(cfg.ckpt_path),
              "protocol": OmegaConf.to_container(e)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    plot_success(result.per_task, out_dir / "success.png",
                 f"{result.benchmark} {result.split}: success {result.success_rate:.3f}")
    print(table(report))
    print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'success.png'}")
    return report


def table(report: dict) -> str:
    width = max(len(t) for t in report["per_task"]) + 2
    lines = [f"{report['benchmark']} {report['split']} split, "
             f"{report['env_steps_trained']:,} env steps trained",
             f"{'task':<{width}}success"]
    lines += [f"{task:<{width}}{v:.3f}" for task, v in report["per_task"].items()]
    lines.append(f"{'mean':<{width}}{report['success_rate']:.3f}   "
                 f"(mean return {report['return']:.1f})")
    return "\n".join(lines)


def plot_success(per_task: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(per_task) + 2), 3.5))
    ax.bar(list(per_task), list(per_task.values()), color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    try:
        report = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return report["success_rate"]


if __name__ == "__main__":
    check_overrides("evaluate")
    main()
