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
- `.hydra/config.yaml` and `.hydra/overrides.yaml` (the resolved config and the command line),
- `csv/metrics.csv` (the training curves),
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


def train_command(run_dir: Path) -> str:
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
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


def publish(run_dir: Path, dest: Path, eval_json: Path | None = None, code_dir: Path | None = None,
            note: str = "") -> dict:
    run_dir = run_dir.resolve()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    eval_json = eval_json or run_dir / "eval" / "eval.json"
    for need in (ckpt, eval_json, run_dir / ".hydra" / "config.yaml", run_dir / "csv" / "metrics.csv"):
        if not need.exists():
            raise SystemExit(f"error: {need} is missing; publish a finished run evaluated with "
                             f"evaluate.py ckpt_path={ckpt} hydra.run.dir={run_dir / 'eval'}")
    report = json.loads(eval_json.read_text())
    if Path(report["ckpt_path"]).resolve() != ckpt:
        raise SystemExit(f"error: {eval_json} scored {report['ckpt_path']}, not {ckpt}; "
                         "evaluate last.ckpt, or pass --eval with its eval.json")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in (".hydra/config.yaml", ".hydra/overrides.yaml", "csv/metrics.csv"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / rel, dest / rel)
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
    p.add_argument("--code-dir", type=Path, default=None, help="checkout the run's code came from")
    p.add_argument("--note", default="", help="a line for the row's README (e.g. machine load)")
    a = p.parse_args(argv)
    r = publish(a.run_dir, a.dest, a.eval, a.code_dir, a.note)
    print(f"{a.dest}: success {r['success_rate']:.3f} at {r['env_steps_trained']:,} env steps")


if __name__ == "__main__":
    sys.exit(main())
