"""Copy a finished run into the repository as a results row: `results/<benchmark>/<method>/seed<k>/`.

    python scripts/publish_run.py RUN_DIR results/ml1/door-open-v3/maml_ppo/seed1

RUN_DIR is a train.py run dir whose `last.ckpt` was evaluated with
`python evaluate.py ckpt_path=RUN_DIR/checkpoints/last.ckpt hydra.run.dir=RUN_DIR/eval`
(or pass `--eval path/to/eval.json`). What is copied is what a reader needs to check the row and
re-evaluate it with one command, and nothing machine-specific:

- `checkpoints/last.ckpt` (the evaluated checkpoint; never a selected one), without an off-policy
  run's replay buffer (`algorithm.checkpoint_buffer=true`: hundreds of MB, needed only to resume
  exactly; the row's README says so),
- `eval.json` (evaluate.py's report; its `ckpt_path` rewritten to the copied checkpoint, relative
  to the repository root),
- `.hydra/config.yaml` and `.hydra/overrides.yaml` (the resolved config and the command line) as
  the run first wrote them (`.hydra/first/` of a run resumed in its own dir),
- `csv/metrics.csv` (the training curves), and `train.log` and `chain.log` where the run has them,
- `eval_train_split.json`: where the run has `eval_train/eval.json`, the same checkpoint scored on
  the training tasks (`evaluate.py ... split=train hydra.run.dir=RUN_DIR/eval_train`), or `--eval-train`,
- `README.md`: the train and evaluate commands, the code commit, the scores.

`python -m metarl_lightning.report results/...` reads these directories like run dirs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def hydra_dir(run_dir: Path) -> Path:
    """The run's first `.hydra/` (hydra_callbacks.KeepFirstConfig keeps it on a resume)."""
    first = run_dir / ".hydra" / "first"
    return first if (first / "config.yaml").is_file() else run_dir / ".hydra"


def train_command(run_dir: Path) -> str:
    overrides = yaml.safe_load((hydra_dir(run_dir) / "overrides.yaml").read_text()) or []
    # Where the run wrote is this machine's business, not the recipe's.
    keep = [o for o in overrides if not o.startswith(("hydra.run.dir=", "ckpt_path="))]
    return " ".join(["python train.py", *keep])


def code_commit(code_dir: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(code_dir), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def copy_checkpoint(src: Path, dst: Path) -> int:
    """Copy src to dst, without an off-policy replay buffer; returns the buffer's bytes (0: a
    byte-for-byte copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    state = torch.load(src, map_location="cpu", weights_only=True)
    replay = state.get("offpolicy", {}).pop("replay", None)
    if replay is None:
        shutil.copy2(src, dst)
        return 0
    torch.save(state, dst)
    return sum(t.numel() * t.element_size() for t in _tensors(replay))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)


def _read_eval(eval_json: Path, ckpt: Path) -> dict:
    report = json.loads(eval_json.read_text())
    if Path(report["ckpt_path"]).resolve() != ckpt:
        raise SystemExit(f"error: {eval_json} scored {report['ckpt_path']}, not {ckpt}; "
                         "evaluate last.ckpt, or pass --eval/--eval-train with its eval.json")
    return report


def _summary(report: dict) -> str:
    per_task = sorted(report["per_task"].items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:.3f}" for k, v in per_task)


def publish(run_dir: Path, dest: Path, eval_json: Path | None = None, code_dir: Path | None = None,
            note: str = "", eval_train: Path | None = None) -> dict:
    run_dir = run_dir.resolve()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    eval_json = eval_json or run_dir / "eval" / "eval.json"
    if eval_train is None and (run_dir / "eval_train" / "eval.json").is_file():
        eval_train = run_dir / "eval_train" / "eval.json"
    config_dir = hydra_dir(run_dir)
    for need in (ckpt, eval_json, config_dir / "config.yaml", run_dir / "csv" / "metrics.csv",
                 *([eval_train] if eval_train else [])):
        if not need.exists():
            raise SystemExit(f"error: {need} is missing; publish a finished run evaluated with "
                             f"evaluate.py ckpt_path={ckpt} hydra.run.dir={run_dir / 'eval'}")
    report = _read_eval(eval_json, ckpt)
    train_report = _read_eval(eval_train, ckpt) if eval_train else None
    if train_report is not None and train_report["split"] != "train":
        raise SystemExit(f"error: {eval_train} is a {train_report['split']}-split evaluation; pass "
                         "the eval.json of evaluate.py ... split=train")
    dest.mkdir(parents=True, exist_ok=True)
    copies = {config_dir / "config.yaml": ".hydra/config.yaml",
              config_dir / "overrides.yaml": ".hydra/overrides.yaml",
              run_dir / "csv" / "metrics.csv": "csv/metrics.csv"}
    copies.update({run_dir / f: f for f in ("train.log", "chain.log") if (run_dir / f).is_file()})
    for src, rel in copies.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    dropped = copy_checkpoint(ckpt, dest / "checkpoints" / "last.ckpt")
    if dropped:
        note = (f"The replay buffer ({dropped / 1e6:.0f} MB) is not in this checkpoint: it "
                "evaluates as trained; resuming from it refills the buffer from empty.\n" + note)
    ckpt_rel = (dest / "checkpoints" / "last.ckpt").resolve()
    try:
        ckpt_rel = ckpt_rel.relative_to(REPO)
    except ValueError:
        pass
    report["ckpt_path"] = str(ckpt_rel)
    (dest / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    if train_report is not None:
        train_report["ckpt_path"] = str(ckpt_rel)
        (dest / "eval_train_split.json").write_text(json.dumps(train_report, indent=2) + "\n")
        protocol = train_report.get("protocol", {})
        rounds = f" eval.num_evals={protocol['num_evals']}" if "num_evals" in protocol else ""
        note = (f"On the **training** tasks (`eval_train_split.json`):\n\n    python evaluate.py "
                f"ckpt_path={ckpt_rel} split=train{rounds}\n\nscores **{train_report['success_rate']:.3f}** "
                f"({_summary(train_report)}; mean return {train_report.get('return', float('nan')):.1f}).\n\n"
                + note)
    per_task = "\n".join(f"| {k} | {v:.3f} |" for k, v in sorted(report["per_task"].items()))
    commit = code_commit(code_dir or REPO)
    (dest / "README.md").write_text(
        f"# {report['method']} on {report['benchmark']}"
        f"{' ' + report['env_name'] if report.get('env_name') else ''}, seed {report['train_seed']}\n\n"
        + ("Held-out success under the protocol (test split): " if report["split"] == "test"
           else "Success under the protocol on the training tasks (MT has no held-out split): "
           if report["benchmark"].startswith("MT")
           else f"Success under the protocol ({report['split']} split): ") +
        f"**{report['success_rate']:.3f}** (mean episode return {report.get('return', float('nan')):.1f}) "
        f"after {report['env_steps_trained']:,} env steps ({report['meta_iterations']} "
        f"meta-iterations), scored on `last.ckpt`.\n\n"
        f"| task | success |\n|---|---|\n{per_task}\n\n"
        f"Trained with (code commit `{commit}`):\n\n    {train_command(run_dir)}\n\n"
        f"Re-evaluate from the repository root:\n\n    python evaluate.py ckpt_path={ckpt_rel}\n\n"
        + (f"{note}\n" if note else ""))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path, help="results/<benchmark>/<method>/seed<k>")
    p.add_argument("--eval", type=Path, default=None, help="eval.json (default RUN_DIR/eval/eval.json)")
    p.add_argument("--eval-train", type=Path, default=None,
                   help="eval.json of split=train (default RUN_DIR/eval_train/eval.json if it exists)")
    p.add_argument("--code-dir", type=Path, default=None, help="checkout the run's code came from")
    p.add_argument("--note", default="", help="a line for the row's README (e.g. machine load)")
    a = p.parse_args(argv)
    r = publish(a.run_dir, a.dest, a.eval, a.code_dir, a.note, a.eval_train)
    print(f"{a.dest}: success {r['success_rate']:.3f} at {r['env_steps_trained']:,} env steps")


if __name__ == "__main__":
    sys.exit(main())
