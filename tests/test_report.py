"""`python -m metarl_lightning.report`: runs grouped by config without seed, the right mean over
seeds, bootstrap CIs that could fail, curves against env steps; W&B identity from the same key."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metarl_lightning.evaluation.plots import plot_seed_curves
from metarl_lightning.loggers import build_loggers, config_group, run_name
from metarl_lightning.report import Run, aggregate, bootstrap_band, build_report, curve_groups, load_runs
from metarl_lightning.report import main as report_main
from tests.conftest import ROOT, compose_cfg
from train import train


def _last_val(run_dir) -> float:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["val/success_rate"]) for r in csv.DictReader(f) if r.get("val/success_rate")][-1]


def _fake_eval(out_dir, run_dir, success: float, per_task: dict) -> None:
    out_dir.mkdir(parents=True)
    (out_dir / "eval.json").write_text(json.dumps({
        "benchmark": "ML1", "split": "test", "success_rate": success, "per_task": per_task,
        "env_steps_trained": 80, "ckpt_path": str(run_dir / "checkpoints" / "last.ckpt")}))


def test_report_over_two_tiny_runs_gives_the_right_mean(tiny_cfg, tmp_path, forked_python):
    runs = tmp_path / "outputs"
    for seed in (1, 2):
        run_dir = runs / f"seed{seed}"
        cfg = tiny_cfg(f"seed={seed}", out=run_dir)
        train(cfg)
        (run_dir / ".hydra").mkdir()  # what Hydra writes next to every run
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    other = runs / "other_lr"  # a different config: its own group
    cfg = tiny_cfg("algorithm.inner_lr=0.05", out=other)
    train(cfg)
    (other / ".hydra").mkdir()
    OmegaConf.save(cfg, other / ".hydra" / "config.yaml")

    # the callback's final meta-test (no evaluate.py yet)
    results = report_main([str(runs / "seed*"), str(other), "--out", str(tmp_path / "r1")])
    assert len(results) == 2
    group = next(g for g, r in results.items() if r["seeds"] == [1, 2])
    vals = [_last_val(runs / "seed1"), _last_val(runs / "seed2")]
    assert results[group]["source"] == "val"
    assert results[group]["mean"] == pytest.approx(np.mean(vals))
    assert (tmp_path / "r1" / "curves.png").stat().st_size > 5000
    assert group in (tmp_path / "r1" / "report.md").read_text()

    # evaluate.py results of both seeds take over as the score, matched through ckpt_path
    _fake_eval(tmp_path / "eval1", runs / "seed1", 0.25, {"reach-v3": 0.25})
    _fake_eval(tmp_path / "eval2", runs / "seed2", 0.75, {"reach-v3": 0.75})
    # `python -m metarl_lightning.report ...`, forked from a preloaded interpreter (conftest)
    proc = forked_python.run("metarl_lightning.report", [str(runs / "seed*"), str(tmp_path / "eval*"),
                                                         "--out", str(tmp_path / "r2")],
                             timeout=300, module=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"| {group} | eval"))
    assert "s1: 0.250, s2: 0.750" in row and "**0.500**" in row


def _rows(steps, keys):
    rows = [{"train/env_steps": str(s), **{k: str(s / steps[-1]) for k in keys}} for s in steps]
    return rows + [{"val/env_steps": str(steps[-1]), "val/success_rate": "0.5"}]


def test_curves_of_a_method_without_pre_adaptation_rows(tmp_path):
    """MT-SAC logs train/success_post but no train/success_pre: its curve is the post line alone
    (this crashed np.interp on an empty series), next to a MAML group that has both."""
    steps = [100, 200, 300, 400]
    runs = [Run(tmp_path / "a", "sac", 1, _rows(steps, ["train/success_post"])),
            Run(tmp_path / "b", "sac", 2, _rows(steps[:3], ["train/success_post"])),
            Run(tmp_path / "c", "maml", 1, _rows(steps, ["train/success_post", "train/success_pre"])),
            Run(tmp_path / "d", "mixed", 1, _rows(steps, ["train/success_post", "train/success_pre"])),
            Run(tmp_path / "e", "mixed", 2, _rows(steps, ["train/success_post"]))]
    # evaluate.py scores: both sac seeds at the same env steps (a star with a CI), the mixed
    # seeds at different env steps (no star: they would not be one point), maml none
    for r, (score, at) in zip([runs[0], runs[1], runs[3], runs[4]],
                              [(0.2, 300), (0.4, 300), (0.5, 400), (0.1, 300)]):
        r.evals = [{"success_rate": score, "env_steps_trained": at, "_mtime": 0.0}]
    groups = curve_groups(runs, k=1)
    sac, maml, mixed = groups["sac"], groups["maml"], groups["mixed"]
    assert list(sac["eval_x"]) == [300] and sac["eval"].tolist() == [[0.2], [0.4]]
    assert list(mixed["eval_x"]) == [] and list(maml["eval_x"]) == []
    assert list(sac["x"]) == [100, 200, 300]  # the shortest seed's grid
    assert sac["post"].shape == (2, 3) and sac["pre"].shape == (0, 3)
    assert sac["post"][0] == pytest.approx([0.25, 0.5, 0.75])
    assert maml["pre"].shape == maml["post"].shape == (1, 4)
    assert mixed["pre"].shape == (0, 4) and mixed["post"].shape == (2, 4)  # pre only where all have it
    assert list(sac["test_x"]) == [] and list(maml["test_x"]) == [400]
    plot_seed_curves(groups, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_the_score_is_the_default_split_not_a_newer_train_split_evaluation(tmp_path):
    """An ML run dir holds eval/ (held-out) and eval_train/ (split=train, written after it, same
    checkpoint): the report scored the training split as the held-out figure (0.889 for 0.327 on
    results/ml10/rl2_ppo_tbptt_rnorm/seed1's run dir). MT has only the training split."""
    def report(bench, split, score, mtime):
        return {"benchmark": bench, "split": split, "success_rate": score,
                "env_steps_trained": 100, "_mtime": mtime}
    ml = Run(tmp_path / "ml", "ml", 1, [],
             [report("ML10", "test", 0.327, 1.0), report("ML10", "train", 0.889, 2.0)])
    assert ml.eval["success_rate"] == 0.327
    assert Run(tmp_path / "ml2", "ml", 2, [], [report("ML10", "train", 0.889, 2.0)]).eval is None
    mt = Run(tmp_path / "mt", "mt", 1, [], [report("MT10", "train", 0.5, 1.0)])
    assert mt.eval["success_rate"] == 0.5


def test_config_group_ignores_the_seed_only(tmp_path):
    a, b = compose_cfg(["seed=1"], tmp_path), compose_cfg(["seed=2"], tmp_path)
    c = compose_cfg(["seed=1", "algorithm.inner_lr=0.05"], tmp_path)
    d = compose_cfg(["seed=1", "data.num_workers=3", "logger=many"], tmp_path)  # not results
    assert config_group(a) == config_group(b) == config_group(d) != config_group(c)
    assert config_group(a).startswith("train/maml_ppo/ML1-reach-v3/")
    assert run_name(a) == "train/maml_ppo/ML1-reach-v3/s1" != run_name(b)


def test_config_group_is_unchanged_by_a_key_whose_value_is_null(tmp_path):
    """A run saved before a null-default key existed groups with the same recipe run after."""
    new = compose_cfg(["seed=1"], tmp_path)
    assert new.model.log_std_max is None
    old = OmegaConf.to_container(new, resolve=True)
    del old["model"]["log_std_max"], old["model"]["log_std_min"]
    assert config_group(old) == config_group(new)
    bounded = compose_cfg(["seed=1", "model.log_std_max=0.0"], tmp_path)
    assert config_group(bounded) != config_group(new)


def test_config_group_fills_keys_added_with_a_value_as_load_run_does(tmp_path):
    """A MAML-PPO run saved before `entropy_bonus` / `outer_minibatches` existed groups with the
    same recipe run now (load_run rebuilds it with those values), and not with another value."""
    new = compose_cfg(["seed=1"], tmp_path)
    assert (new.algorithm.entropy_bonus, new.algorithm.outer_minibatches) == ("gaussian", 1)
    old = OmegaConf.to_container(new, resolve=True)
    del old["algorithm"]["entropy_bonus"], old["algorithm"]["outer_minibatches"]
    assert config_group(old) == config_group(new)
    assert "entropy_bonus" not in old["algorithm"]  # the caller's config is not changed
    other = compose_cfg(["seed=1", "algorithm.outer_minibatches=2"], tmp_path)
    assert config_group(other) != config_group(new)


def test_wandb_logger_gets_name_group_tags_and_resumes_the_run_id(tmp_path):
    cfg = compose_cfg(["logger=wandb", "logger.wandb.entity=me", "logger.wandb.job_type=sweep",
                       "tags=[mine]"], tmp_path)
    (logger,) = build_loggers(cfg)
    init = logger._wandb_init
    assert init["name"] == run_name(cfg) and init["group"] == config_group(cfg)
    assert init["entity"] == "me" and init["job_type"] == "sweep"
    assert init["tags"] == ["mine", "train", "maml_ppo", "ML1-reach-v3"]
    (resumed,) = build_loggers(cfg, {"wandb_run_id": "abc123"})
    assert resumed._wandb_init["id"] == "abc123" and resumed._wandb_init["resume"] == "allow"


def test_bootstrap_band_brackets_the_mean():
    lo, hi = bootstrap_band(np.full((4, 3), 0.5))
    assert np.allclose(lo, 0.5) and np.allclose(hi, 0.5) and lo.shape == (3,)
    lo, hi = bootstrap_band(np.array([[0.0], [1.0]]), reps=4000)
    assert lo[0] == 0.0 and hi[0] == 1.0  # 2 seeds: resamples of both 0s and both 1s happen
    lo, hi = bootstrap_band(np.array([[0.0], [0.2], [0.4], [0.6], [0.8]]), reps=4000)
    assert 0.1 < lo[0] < 0.4 < hi[0] < 0.7


def test_aggregate_mean_iqm_and_ci():
    scores = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 1.0], [0.2, 0.2]])  # (runs, tasks)
    agg = aggregate(scores, reps=2000)
    assert agg["mean"] == pytest.approx(scores.mean())
    # IQM of the 8 values sorted (0, .2, .2, .5, .5, 1, 1, 1): the middle 4 -> (.2+.5+.5+1)/4
    assert agg["iqm"] == pytest.approx(0.55)
    assert agg["mean_ci"][0] < agg["mean"] < agg["mean_ci"][1]
    assert aggregate(scores[:1])["mean_ci"] is None  # one run: no CI


def test_aggregate_ci_is_the_same_for_the_same_runs_and_leaves_the_global_rng_alone():
    """rliable bootstraps with NumPy's global RNG: the report seeds it for the call and restores
    it, so regenerating a report gives the same CIs whatever ran before."""
    scores = np.random.default_rng(1).random((2, 10))
    np.random.seed(5)
    first = aggregate(scores, reps=500)
    np.random.seed(6)  # another global state before the second call
    second = aggregate(scores, reps=500)
    assert first["mean_ci"] == second["mean_ci"] and first["iqm_ci"] == second["iqm_ci"]
    after = np.random.random()
    np.random.seed(6)
    assert np.random.random() == after  # the caller's RNG stream is untouched


def test_per_task_table_matches_tasks_by_name_and_averages_over_seeds(tmp_path):
    """The per-class rows the README quotes: tasks matched by name (evaluate.py may list them in
    any order), mean over seeds; a task only one seed has is left out of both tables."""
    def run(seed, per_task):
        e = {"success_rate": float(np.mean(list(per_task.values()))), "per_task": per_task,
             "_mtime": 0.0}
        return Run(tmp_path / f"s{seed}", "g", seed, [{"train/env_steps": "10"}], [e])

    runs = [run(1, {"door-close-v3": 0.2, "lever-pull-v3": 0.0, "only-here": 1.0}),
            run(2, {"lever-pull-v3": 0.4, "door-close-v3": 0.0})]
    text, results = build_report(runs)
    assert results["g"]["source"] == "eval" and results["g"]["values"] == pytest.approx([0.4, 0.2])
    assert results["g"]["mean"] == pytest.approx(np.mean([0.2, 0.0, 0.0, 0.4]))  # runs x tasks
    assert "| g (eval) | door-close-v3 | s1: 0.200, s2: 0.000 | 0.100 |" in text
    assert "| g (eval) | lever-pull-v3 | s1: 0.000, s2: 0.400 | 0.200 |" in text
    assert "only-here" not in text


def test_report_rejects_paths_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no train.py run dirs"):
        report_main([str(tmp_path)])
    assert load_runs([str(tmp_path)]) == []


def test_published_row_keeps_its_eval_and_reports_like_a_run(tiny_cfg, tmp_path):
    """scripts/publish_run.py: a results row holds last.ckpt, eval.json (ckpt_path rewritten to
    the copy), config, curves and the commands; the report scores it with its eval.json."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from publish_run import publish

    run_dir = tmp_path / "run"
    cfg = tiny_cfg("seed=3", out=run_dir)
    train(cfg)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- experiment=ml1_cpu\n- seed=3\n- hydra.run.dir=/somewhere/run\n")
    with pytest.raises(SystemExit, match="eval.json is missing"):
        publish(run_dir, tmp_path / "results" / "x")
    _fake_eval(run_dir / "eval", run_dir, 0.4, {"reach-v3": 0.4})
    data = json.loads((run_dir / "eval" / "eval.json").read_text())
    (run_dir / "eval" / "eval.json").write_text(json.dumps({
        **data, "method": "maml_ppo", "env_name": "reach-v3", "train_seed": 3,
        "meta_iterations": 2}))

    dest = tmp_path / "results" / "ml1" / "reach-v3" / "maml_ppo" / "seed3"
    publish(run_dir, dest)
    assert (dest / "checkpoints" / "last.ckpt").read_bytes() == \
        (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    published = json.loads((dest / "eval.json").read_text())
    assert published["ckpt_path"].endswith("seed3/checkpoints/last.ckpt")
    assert published["success_rate"] == 0.4
    readme = (dest / "README.md").read_text()
    assert "python train.py experiment=ml1_cpu seed=3\n" in readme
    assert "hydra.run.dir" not in readme and "**0.400**" in readme

    results = report_main([str(tmp_path / "results"), "--out", str(tmp_path / "r")])
    (group,) = results
    assert results[group]["source"] == "eval" and results[group]["mean"] == pytest.approx(0.4)

    # resumed in its own dir: Hydra rewrote .hydra/, KeepFirstConfig kept the start in .hydra/first/
    shutil.copytree(run_dir / ".hydra", run_dir / ".hydra" / "first")
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- experiment=ml1_cpu\n- seed=3\n- trainer.max_steps=9\n- ckpt_path=/somewhere/last.ckpt\n")
    (run_dir / "chain.log").write_text("start\n")
    _fake_eval(run_dir / "eval_train", run_dir, 0.7, {"reach-v3": 0.7})
    with pytest.raises(SystemExit, match="test-split evaluation; pass the eval.json of"):
        publish(run_dir, tmp_path / "results2" / "x")  # eval_train/ must hold split=train
    data = json.loads((run_dir / "eval_train" / "eval.json").read_text())
    (run_dir / "eval_train" / "eval.json").write_text(json.dumps({
        **data, "split": "train", "protocol": {"num_evals": 3}}))
    dest = tmp_path / "results2" / "ml1" / "reach-v3" / "maml_ppo" / "seed3"
    publish(run_dir, dest)
    readme = (dest / "README.md").read_text()
    assert "python train.py experiment=ml1_cpu seed=3\n" in readme  # the first command
    assert (dest / ".hydra" / "overrides.yaml").read_text() == \
        (run_dir / ".hydra" / "first" / "overrides.yaml").read_text()
    assert (dest / "chain.log").read_text() == "start\n"
    on_train = json.loads((dest / "eval_train_split.json").read_text())
    assert on_train["split"] == "train" and on_train["success_rate"] == 0.7
    assert on_train["ckpt_path"] == json.loads((dest / "eval.json").read_text())["ckpt_path"]
    assert on_train["ckpt_path"].endswith("results2/ml1/reach-v3/maml_ppo/seed3/checkpoints/last.ckpt")
    assert "split=train eval.num_evals=3\n\nscores **0.700** (reach-v3 0.700" in readme


def test_published_checkpoint_leaves_the_replay_buffer_behind(tmp_path):
    """An off-policy run's last.ckpt with its buffer (algorithm.checkpoint_buffer=true) is
    published without it, everything else kept; other checkpoints are copied byte for byte."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from publish_run import copy_checkpoint

    weights = {"w": torch.arange(6.0)}
    state = {"state_dict": weights, "offpolicy": {
        "vector_steps": 7, "replay": {"obs": torch.zeros(1000, 39), "idx": [torch.zeros(3)]}}}
    torch.save(state, tmp_path / "a.ckpt")
    dropped = copy_checkpoint(tmp_path / "a.ckpt", tmp_path / "out" / "a.ckpt")
    assert dropped == 1000 * 39 * 4 + 3 * 4
    copied = torch.load(tmp_path / "out" / "a.ckpt", weights_only=True)
    assert copied["offpolicy"] == {"vector_steps": 7}
    assert torch.equal(copied["state_dict"]["w"], weights["w"])
    torch.save({"state_dict": weights}, tmp_path / "b.ckpt")
    assert copy_checkpoint(tmp_path / "b.ckpt", tmp_path / "out" / "b.ckpt") == 0
    assert (tmp_path / "out" / "b.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()


def test_committed_rows_load_with_keys_added_since():
    """Every committed results row's checkpoint still builds its module (load_run), keys added
    after it was written filled with what that run did (entropy_bonus: gaussian; MAML-PPO's
    outer_minibatches: 1; RL²-PPO's bptt_episodes and task_reward_norm: None)."""
    from metarl_lightning.checkpoints import load_run, read_checkpoint

    ckpts = sorted(ROOT.glob("results/**/checkpoints/last.ckpt"))  # in_progress/ included
    assert ckpts, "no committed results rows"
    filled = 0
    for ckpt in ckpts:
        module, cfg, _ = load_run(str(ckpt))
        stored = read_checkpoint(str(ckpt))["run_config"]["algorithm"]
        ppo, rl2 = "ent_coef" in cfg.algorithm, "recurrent_info_in_obs" in cfg.algorithm
        checks = [(ppo, "entropy_bonus", "gaussian"),
                  ("outer_epochs" in cfg.algorithm, "outer_minibatches", 1),
                  (rl2, "bptt_episodes", None),  # whole-trial BPTT, as it ran
                  (rl2, "task_reward_norm", None)]  # one reward_scale, as it ran
        for applies, key, value in checks:
            if applies and key not in stored:
                assert module.hparams[key] == value, (ckpt, key)
                filled += 1
    assert filled > 0  # some committed run predates a key (the rows of 2026-12-06 and before)
