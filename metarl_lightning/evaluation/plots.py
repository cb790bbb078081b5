"""Learning curves from a run's metrics.csv, against environment steps.

python -m metarl_lightning.evaluation.plots outputs/train/<run>/csv/metrics.csv out.png
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def _series(rows: list[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x_key]), float(r[key])) for r in rows if r.get(key) and r.get(x_key)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smooth(y: list[float], k: int = 10) -> list[float]:
    return [sum(y[max(0, i - k + 1): i + 1]) / len(y[max(0, i - k + 1): i + 1])
            for i in range(len(y))]


def plot_learning_curves(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    fig, (ax_s, ax_r) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label, color in (("train/success_pre", "pre-adaptation (train goals)", "tab:gray"),
                              ("train/success_post", "post-adaptation (train goals)", "tab:blue")):
        x, y = _series(rows, key, "train/env_steps")
        ax_s.plot(x, _smooth(y), label=label + ", 10-it. mean", color=color)
    x, y = _series(rows, "val/success_rate", "val/env_steps")
    if x:
        ax_s.plot(x, y, "o-", color="tab:red", label="meta-test (held-out goals, protocol)")
    ax_s.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02))
    ax_s.legend(fontsize=7)
    for key, label, color in (("train/return_pre", "pre-adaptation", "tab:gray"),
                              ("train/return_post", "post-adaptation", "tab:blue")):
        x, y = _series(rows, key, "train/env_steps")
        ax_r.plot(x, _smooth(y), label=label, color=color)
    ax_r.set(xlabel="env steps", ylabel="episode return (train goals)")
    ax_r.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    plot_learning_curves(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
