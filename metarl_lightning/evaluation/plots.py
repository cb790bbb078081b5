"""Figures, always against environment steps (cleanrl's convention: a curve's x-axis is the data the
agent consumed, not the number of updates).

- `plot_learning_curves`: one run's metrics.csv (pre/post-adaptation training success, meta-test
  points, returns). `python -m metarl_lightning.evaluation.plots <metrics.csv> <out.png>`
- `plot_seed_curves`: several seeds of one or more configs, mean and 95% bootstrap band
  (`python -m metarl_lightning.report` draws it).
- `plot_eval`: evaluate.py's success.png, per-task success with its spread over rounds.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_rows(metrics_csv: str | Path) -> list[dict]:
    with open(metrics_csv) as f:
        return list(csv.DictReader(f))


def series(rows: list[dict], key: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the rows that carry both keys, sorted by x."""
    pts = sorted((float(r[x_key]), float(r[key])) for r in rows if r.get(key) and r.get(x_key))
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def smooth(y: Sequence[float], k: int = 10) -> np.ndarray:
    """Trailing mean over the last k points (fewer at the start)."""
    y = np.asarray(y, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - k)
    return (c[i] - c[lo]) / (i - lo)


def plot_learning_curves(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> None:
    plt = _pyplot()
    rows = read_rows(metrics_csv)
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label, color in (("train/success_pre", "pre-adaptation (train goals)", "tab:gray"),
                              ("train/success_post", "post-adaptation (train goals)", "tab:blue")):
        x, y = series(rows, key, "train/env_steps")
        ax_s.plot(x, smooth(y), label=label + ", 10-it. mean", color=color)
    x, y = series(rows, "val/success_rate", "val/env_steps")
    if len(x):
        ax_s.plot(x, y, "o-", color="tab:red", label="meta-test (held-out goals, protocol)")
    ax_s.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02))
    ax_s.legend(fontsize=7)
    for key, label, color in (("train/return_pre", "pre-adaptation", "tab:gray"),
                              ("train/return_post", "post-adaptation", "tab:blue")):
        x, y = series(rows, key, "train/env_steps")
        ax_r.plot(x, smooth(y), label=label, color=color)
    ax_r.set(xlabel="env steps", ylabel="episode return (train goals)")
    ax_r.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _points(ax, x, ys, band, fmt: str, color, label: str, **style) -> None:
    """Mean over seeds (rows of ys) at x; a CI bar where there are several seeds. The bar is
    unlabelled and the point drawn with ax.plot, so the legend lists each config's entries
    together in drawing order (errorbar containers would all go last)."""
    mean = ys.mean(0)
    ax.plot(x, mean, fmt, color=color, label=label, **style)
    if len(ys) > 1:
        lo, hi = band(ys)
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor=color, capsize=3)


def plot_seed_curves(groups: dict[str, dict], out_png: str | Path) -> None:
    """groups: {label: {"x": (T,), "pre": (S, T) or (0, T) for runs without adaptation,
    "post": (S, T), "test_x": (V,),
    "test": (S, V), optional "eval_x": (E,), "eval": (S, E), "band": fn((S, T)) -> (lo, hi)}}: per
    config, the seeds' smoothed training success on a common env-step grid, their meta-test points
    and evaluate.py's score (a star). Mean line, band = the 95% bootstrap CI of the mean over seeds
    (none for one seed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, g) in enumerate(groups.items()):
        c, n = colors[i % len(colors)], len(g["post"]) or len(g["test"])
        name = f"{label} ({n} seed{'s' if n > 1 else ''})"
        # a run with meta-tests only (no train/* rows) is named by its test points
        test_label = ("" if len(g["x"]) else f"{name}: ") + "meta-test (protocol; ML: held-out)"
        if len(g["x"]):
            # no "pre" rows: a method without adaptation (MT-SAC), its training episodes' success
            post = "post-adaptation (train)" if len(g["pre"]) else "training episodes"
            ax.plot(g["x"], g["post"].mean(0), color=c, label=f"{name}: {post}")
            if len(g["pre"]):
                ax.plot(g["x"], g["pre"].mean(0), color=c, ls=":", alpha=0.8,
                        label="pre-adaptation (train)")
            if n > 1:
                ax.fill_between(g["x"], *g["band"](g["post"]), color=c, alpha=0.2, lw=0)
        if len(g["test_x"]):
            _points(ax, g["test_x"], g["test"], g["band"], "o--", c, test_label)
        if len(g.get("eval_x", ())):  # the score a results row reports: evaluate.py, full protocol
            _points(ax, g["eval_x"], g["eval"], g["band"], "*", c,
                    "evaluate.py on last.ckpt (full protocol)", ms=12, mec="k")
    ax.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02),
           title="mean over seeds, band: 95% bootstrap CI")
    # Beside the axes, not on them: with 5+ configs (docs/ml10_results) a legend inside hides the
    # curves it names.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_eval(report: dict, out_png: str | Path) -> None:
    plt = _pyplot()
    fig = eval_figure(report)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def eval_figure(report: dict):
    """Per-task success (bar: mean over rounds, dots: each round, whisker: min-max) with the value
    written on every bar, so a 0.0 task is visible; one task (ML1/MT1): success per round."""
    plt = _pyplot()
    per_task: dict[str, float] = report["per_task"]
    rounds: dict[str, list[float]] = report.get("per_task_rounds") or {
        t: [v] for t, v in per_task.items()}
    tasks = list(per_task)
    single = len(tasks) == 1
    labels = ([f"round {i + 1}" for i in range(len(rounds[tasks[0]]))] if single else tasks)
    means = rounds[tasks[0]] if single else [per_task[t] for t in tasks]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(labels) + 2.5), 3.8))
    x = np.arange(len(labels))
    ax.bar(x, means, color="tab:blue", alpha=0.75, width=0.6)
    if not single:
        for i, t in enumerate(tasks):
            r = np.asarray(rounds[t])
            if len(r) > 1:
                ax.errorbar(i, r.mean(), yerr=[[r.mean() - r.min()], [r.max() - r.mean()]],
                            color="black", capsize=3, lw=1)
                ax.scatter(i + np.linspace(-0.15, 0.15, len(r)), r, s=8, color="black", zorder=3)
    for i, v in enumerate(means):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(report["success_rate"], color="tab:red", ls="--", lw=1,
               label=f"mean {report['success_rate']:.3f}")
    ax.set_xticks(x, labels, rotation=60 if not single else 0, ha="right" if not single else "center")
    ax.set(ylim=(0, 1.12), xlim=(-0.7, len(labels) - 0.3), ylabel="success rate")
    p = report.get("protocol", {})
    detail = (f"{len(report.get('per_round', [])) or 1} round(s), "
              f"{p.get('adaptation_episodes', 0)} adaptation + {p.get('evaluation_episodes', 0)} "
              "evaluation episodes" if "num_evals" in p else f"{p.get('mt_episodes', '?')} episodes per task")
    ax.set_title(f"{report['benchmark']} {report.get('env_name') or ''} {report['split']} split, "
                 f"{report.get('env_steps_trained', 0):,} env steps trained\n"
                 f"seed {report.get('seed', '?')}; {detail}; "
                 f"{report.get('max_episode_steps', '?')}-step episodes", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    plot_learning_curves(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
