"""Compare and aggregate runs: `python -m metarl_lightning.report <run dirs or globs> [--out DIR]`.

Reads what the runs already wrote: train.py run dirs (`.hydra/config.yaml`, `csv/metrics.csv`)
and evaluate.py run dirs (`eval.json`, matched to its train run through `ckpt_path`); a directory
is searched for both (e.g. `outputs/multirun/...`). Runs whose configs differ only in the seed
form one config group (`loggers.config_group`, the same key as the W&B group).

Prints, and writes to `<out>/report.md`:
- one row per run: seed, env steps, final meta-test `val/success_rate` (the callback's protocol
  run at the end of training), evaluate.py's success if any, last training success;
- one row per config: the score per seed, its mean, the 95% stratified-bootstrap CI of the mean
  and the IQM (interquartile mean over runs x tasks) from rliable (Agarwal et al. 2021);
- one row per config and task (benchmarks of several tasks): the score per seed and its mean.
The score is evaluate.py's success on its default split (ML: the held-out test split, MT: the
training tasks; a `split=train` evaluation of an ML run is never its score) when every run of the
group has one (the full protocol), otherwise the callback's final val/success_rate (`--score`
forces one). `<out>/curves.png`: success against env steps, mean over seeds with a 95% bootstrap
band, pre/post adaptation, meta-test points, evaluate.py's score as a star.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metarl_lightning.evaluation.plots import plot_seed_curves, read_rows, series, smooth

_SKIP_DIRS = {"checkpoints", "csv", "tensorboard", "wandb", "videos", ".hydra"}


@dataclass
class Run:
    path: Path
    group: str
    seed: int
    rows: list[dict]
    evals: list[dict] = field(default_factory=list)

    def last(self, key: str) -> float | None:
        vals = [float(r[key]) for r in self.rows if r.get(key)]
        return vals[-1] if vals else None

    def final_val_per_task(self) -> dict[str, float]:
        row = next((r for r in reversed(self.rows) if r.get("val/success_rate")), {})
        prefix = "val/success_rate/"
        return {k[len(prefix):]: float(v) for k, v in row.items() if k.startswith(prefix) and v}

    @property
    def eval(self) -> dict | None:
        """evaluate.py's report of this run's latest checkpoint (most env steps, then newest) on
        the split a results row reports (`is_score`): an ML run's `split=train` evaluation
        (publish_run.py's `eval_train/`) sits in the same run dir and is not its score."""
        scored = [e for e in self.evals if is_score(e)]
        return max(scored, key=lambda e: (e.get("env_steps_trained", 0), e["_mtime"]),
                   default=None)


def is_score(report: dict) -> bool:
    """evaluate.py's report on its default split (ML: held-out test, MT: training tasks)."""
    # imported here: envs.benchmarks imports metaworld and mujoco, which the report needs
    # only for these two names
    from metarl_lightning.envs.benchmarks import benchmark_kind, scored_split

    if "benchmark" not in report or "split" not in report:
        return True
    return report["split"] == scored_split(benchmark_kind(report["benchmark"]))


# --- discovery ----------------------------------------------------------------------------------
def find_dirs(patterns: list[str]) -> tuple[list[Path], list[Path]]:
    """(train run dirs, eval.json files) under the given dirs/globs."""
    runs, evals = set(), set()
    for pattern in patterns:
        matches = glob.glob(pattern) or [pattern]
        for m in matches:
            p = Path(m)
            if p.is_file() and p.name == "eval.json":
                evals.add(p.resolve())
                continue
            if not p.is_dir():
                raise SystemExit(f"error: {m!r} is not a run dir, a glob of them or an eval.json")
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
                r = Path(root)
                if (r / ".hydra" / "config.yaml").exists() and (r / "csv" / "metrics.csv").exists():
                    runs.add(r.resolve())
                if "eval.json" in files:
                    evals.add((r / "eval.json").resolve())
    return sorted(runs), sorted(evals)


def load_config(run_dir: Path) -> dict:
    """The parts of the run's config that define its group, resolved (as train.py saw them)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    out = {k: OmegaConf.to_container(cfg[k], resolve=True)
           for k in ("benchmark", "model", "algorithm") if k in cfg}
    out["trainer"] = {k: cfg.trainer.get(k) for k in ("max_steps", "max_time")}
    out["task_name"], out["seed"] = cfg.get("task_name", "train"), int(cfg.get("seed", 0))
    return out


def load_runs(patterns: list[str]) -> list[Run]:
    from metarl_lightning.loggers import config_group

    run_dirs, eval_files = find_dirs(patterns)
    runs = {}
    for d in run_dirs:
        cfg = load_config(d)
        runs[d] = Run(d, config_group(cfg), cfg["seed"], read_rows(d / "csv" / "metrics.csv"))
    for f in eval_files:
        report = json.loads(f.read_text())
        report["_mtime"], report["_path"] = f.stat().st_mtime, str(f)
        run_dir = Path(report.get("ckpt_path", "")).resolve().parent.parent  # <run>/checkpoints/x
        if run_dir not in runs:  # a published row (scripts/publish_run.py): eval.json inside it
            run_dir = next((d for d in f.parents if d in runs), run_dir)
        if run_dir in runs:
            runs[run_dir].evals.append(report)
    return list(runs.values())


# --- statistics ---------------------------------------------------------------------------------
def bootstrap_band(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """95% percentile-bootstrap CI of the mean over axis 0 (seeds), pointwise along the rest."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)  # (reps, ...)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def aggregate(scores: np.ndarray, reps: int = 2000) -> dict:
    """scores (runs, tasks) of one config: mean, IQM and their 95% stratified-bootstrap CIs
    (rliable; CIs need 2 runs or more)."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError:
        raise SystemExit('error: the report needs rliable: pip install -e ".[report]"') from None

    scores = np.asarray(scores, dtype=float)
    out = {"mean": float(scores.mean()), "iqm": float(metrics.aggregate_iqm(scores)),
           "mean_ci": None, "iqm_ci": None}
    if len(scores) > 1:
        fn = lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])  # noqa: E731
        # rliable's StratifiedBootstrap draws its resamples from NumPy's global RNG (its
        # random_state is not used: two calls with RandomState(0) gave CIs 0.007 apart), so the
        # global RNG is seeded for the call and put back after: the same runs, the same CI.
        state = np.random.get_state()
        np.random.seed(0)
        try:
            _, ci = rly.get_interval_estimates({"g": scores}, fn, reps=reps)
        finally:
            np.random.set_state(state)
        out["mean_ci"], out["iqm_ci"] = tuple(ci["g"][:, 0]), tuple(ci["g"][:, 1])
    return out


def run_score(run: Run, source: str) -> tuple[float, dict[str, float]] | None:
    """(success, {task: success}) of a run from evaluate.py ('eval') or the callback ('val');
    a score without a per-task breakdown is its own single task, "all"."""
    if source == "eval":
        e = run.eval
        return (e["success_rate"], dict(e["per_task"])) if e else None
    val = run.last("val/success_rate")
    if val is None:
        return None
    return val, run.final_val_per_task() or {"all": val}


# --- report -------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ci(ci: tuple | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def build_report(runs: list[Run], score: str = "auto") -> tuple[str, dict]:
    """(markdown, {group: aggregate dict with 'source', 'seeds', 'values'})."""
    lines = ["| run | config | seed | env steps | final val/success_rate | evaluate.py success "
             "| last train/success_post |", "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r.group, r.seed)):
        steps = r.last("train/env_steps")
        e = r.eval
        lines.append(f"| {r.path.name} | {r.group} | {r.seed} | "
                     f"{f'{int(steps):,}' if steps is not None else '–'} | "
                     f"{_fmt(r.last('val/success_rate'))} | "
                     f"{_fmt(e['success_rate']) if e else '–'} | "
                     f"{_fmt(r.last('train/success_post'))} |")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    lines += ["", "| config | score | seeds | per seed | mean | 95% CI (mean) | IQM | 95% CI (IQM) |",
              "|---|---|---|---|---|---|---|---|"]
    results, per_task = {}, []
    for g, members in sorted(groups.items()):
        members.sort(key=lambda r: r.seed)
        source = score if score != "auto" else (
            "eval" if all(r.eval for r in members) else "val")
        scored = [(r, s) for r in members if (s := run_score(r, source)) is not None]
        if not scored:
            lines.append(f"| {g} | {source} | 0 | – | – | – | – | – |")
            continue
        per_run = [s[1] for _, s in scored]  # {task: success} of each seed
        tasks = [t for t in per_run[0] if all(t in p for p in per_run)]
        matrix = np.array([[p[t] for t in tasks] for p in per_run])  # (runs, tasks)
        if not tasks:  # the seeds name no task in common: their overall scores alone
            tasks, matrix = ["all"], np.array([[s[0]] for _, s in scored])
        agg = aggregate(matrix)
        agg.update(source=source, seeds=[r.seed for r, _ in scored],
                   values=[s[0] for _, s in scored])
        results[g] = agg
        per_seed = ", ".join(f"s{r.seed}: {s[0]:.3f}" for r, s in scored)
        lines.append(f"| {g} | {source} | {len(scored)} | {per_seed} | **{agg['mean']:.3f}** | "
                     f"{_ci(agg['mean_ci'])} | {agg['iqm']:.3f} | {_ci(agg['iqm_ci'])} |")
        if len(tasks) > 1:
            per_task.append((g, source, agg["seeds"], tasks, matrix))
    lines += ["", "score: `eval` = evaluate.py (full protocol), `val` = final meta-test of the "
              "training callback. CI: stratified bootstrap over runs (rliable), 95%."]
    if per_task:
        lines += ["", "Per task (the same score; mean over seeds):", "",
                  "| config | task | per seed | mean |", "|---|---|---|---|"]
        for g, source, seeds, tasks, matrix in per_task:
            for j, t in enumerate(tasks):
                each = ", ".join(f"s{seed}: {v:.3f}" for seed, v in zip(seeds, matrix[:, j]))
                lines.append(f"| {g} ({source}) | {t} | {each} | {matrix[:, j].mean():.3f} |")
    return "\n".join(lines), results


def curve_groups(runs: list[Run], k: int = 10) -> dict[str, dict]:
    """Per config: seeds' smoothed pre/post training success on a common env-step grid (the
    shortest run's), their meta-test points at the env steps all seeds share, and evaluate.py's
    score where every seed has one at the same env steps."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    out = {}
    for g, members in sorted(groups.items()):
        curves = {key: [series(r.rows, key, "train/env_steps") for r in members]
                  for key in ("train/success_pre", "train/success_post")}
        lengths = [x[-1] for x, _ in curves["train/success_post"] if len(x)]
        grid = np.array([])
        if len(lengths) == len(members):
            shortest = min(range(len(members)), key=lambda i: curves["train/success_post"][i][0][-1])
            grid = curves["train/success_post"][shortest][0]
        # a key only some runs log (MT-SAC has no pre-adaptation success) is left empty, (0, T)
        interp = {key: np.array([np.interp(grid, x, smooth(y, k)) for x, y in curves[key]])
                  if len(grid) and all(len(x) for x, _ in curves[key])
                  else np.zeros((0, len(grid))) for key in curves}
        tests = [dict(zip(*series(r.rows, "val/success_rate", "val/env_steps"))) for r in members]
        shared = sorted(set.intersection(*(set(t) for t in tests))) if tests else []
        # evaluate.py's full-protocol score, where every seed has one at the same env steps
        evals = [r.eval for r in members]
        at = {e.get("env_steps_trained") for e in evals if e}
        full = all(evals) and len(at) == 1 and None not in at
        out[g] = {"x": grid, "pre": interp["train/success_pre"], "post": interp["train/success_post"],
                  "test_x": np.array(shared), "test": np.array([[t[s] for s in shared] for t in tests]),
                  "eval_x": np.array(sorted(at) if full else []),
                  "eval": np.array([[e["success_rate"]] if full else [] for e in evals]),
                  "band": bootstrap_band}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m metarl_lightning.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run dirs, globs of them, or eval.json files")
    parser.add_argument("--out", default="outputs/report", help="where report.md, curves.png go")
    parser.add_argument("--score", choices=("auto", "eval", "val"), default="auto")
    parser.add_argument("--smooth", type=int, default=10, help="trailing mean over N iterations")
    args = parser.parse_args(argv)
    runs = load_runs(args.paths)
    if not runs:
        raise SystemExit(f"error: no train.py run dirs (with .hydra/config.yaml and "
                         f"csv/metrics.csv) under {' '.join(args.paths)}")
    text, results = build_report(runs, args.score)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    plot_seed_curves(curve_groups(runs, args.smooth), out / "curves.png")
    print(text)
    print(f"\nwrote {out / 'report.md'} and {out / 'curves.png'}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
