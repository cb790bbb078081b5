"""Every benchmark config composes; bad input exits with one line that names the fix."""

import pytest
from omegaconf import OmegaConf

from metarl_lightning import config as schema
from metarl_lightning.types import ConfigError
from tests.conftest import compose_cfg

BENCHMARKS = ["ml1", "ml10", "ml25", "ml45", "mt1", "mt10", "mt25", "mt50"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_composes_and_validates(name, tmp_path):
    cfg = compose_cfg([f"benchmark={name}"], tmp_path)
    schema.validate(cfg)
    assert cfg.benchmark.max_episode_steps == 500
    assert cfg.benchmark.name == name.upper()


def test_readme_example_override_composes(tmp_path):
    cfg = compose_cfg(["benchmark=mt10", "model.hidden_dim=256"], tmp_path)
    assert cfg.model.hidden_dim == 256 and cfg.benchmark.use_one_hot


@pytest.mark.parametrize("group,option", [("model", "mlp"), ("model", "seed_mlp"),
                                          ("model", "mlp_large"),
                                          ("model", "gru"), ("model", "multihead_mlp"),
                                          ("algorithm", "rl2_ppo"), ("algorithm", "mt_ppo"),
                                          ("trainer", "gpu"), ("logger", "many"),
                                          ("logger", "none"), ("logger", "wandb"),
                                          ("logger", "tensorboard"), ("debug", "default"),
                                          ("debug", "fdr"), ("debug", "profiler"),
                                          ("callbacks", "none")])
def test_group_options_compose(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path)
    OmegaConf.to_container(cfg[group], resolve=True) if cfg[group] is not None else None


def test_validate_rejects_nonpositive_learning_rate(tmp_path):
    cfg = compose_cfg(["algorithm.inner_lr=0"], tmp_path)
    with pytest.raises(ConfigError, match="algorithm.inner_lr must be > 0"):
        schema.validate(cfg)


BAD_INPUT = [
    (["benchmark=ml11"], "unknown benchmark 'ml11'; choose one of: ml1, ml10"),
    (["benchmark=ml10", "benchmark.meta_batch_size=15"], "valid values: 10, 20, 50"),
    (["model.hidden_dim=abc"], "bad value for model.hidden_dim"),
    (["trainer.max_steps=1.5"], "bad value for trainer.max_steps"),
    (["model.hiden_dim=3"], "unknown config key 'model.hiden_dim'"),
    (["model.hiden_dim=3"], "or add a new key with +model.hiden_dim=3"),  # Hydra's hint kept
    (["logger.wandb.entity=me"], "select it with logger=wandb"),  # csv logger chosen
    (["debug=fdrr"], "unknown debug 'fdrr'; choose one of: default, fdr, profiler"),
    (["benchmark.env_name=reach-v9"], "needs benchmark.env_name set to a Meta-World v3 task"),
    (["trainer.max_steps=0"], "trainer.max_steps must be > 0"),
    (["algorithm.entropy_bonus=sqashed"], "set e.g. algorithm.entropy_bonus=squashed"),
    (["algorithm=rl2_ppo", "model=gru", "algorithm.task_reward_norm=1.5"],
     "algorithm.task_reward_norm must be null or a decay in (0, 1), got 1.5"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path '/no/such.ckpt' does not exist"),
    # raised by the model's constructor, inside hydra's instantiate
    (["model.log_std_min=0.5", "model.log_std_max=0.0"], "model.log_std_min=0.5 must be < model."),
    (["algorithm=rl2_ppo", "model=gru", "model.std_type=mlp"], "set model.std_type=parameter"),
    (["eval.evaluation_episodes=0"], "eval.evaluation_episodes must be >= 1, got 0"),
]


@pytest.mark.parametrize("key,value,expected", [
    ("adaptation_episodes", -1, "eval.adaptation_episodes must be >= 0, got -1"),
    ("num_evals", 0, "eval.num_evals must be >= 1, got 0; set e.g. eval.num_evals=1 or null"),
    ("mt_episodes", 0, "eval.mt_episodes must be >= 1"),
])
def test_protocol_counts_are_checked(key, value, expected, tmp_path):
    cfg = compose_cfg([], tmp_path)
    schema.check_eval(cfg.eval)  # the defaults pass, 0 adaptation episodes too
    cfg.eval.adaptation_episodes = 0
    schema.check_eval(cfg.eval)
    cfg.eval[key] = value
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        schema.check_eval(cfg.eval)


@pytest.mark.parametrize("args,expected", BAD_INPUT)
def test_bad_input_exits_with_one_line(args, expected, tmp_path, forked_python):
    # `python train.py ...`, forked from a preloaded interpreter (conftest.ForkedPython): 11
    # fresh interpreters cost ~70 s on 2 cores; test_methods.py's mismatch runs a fresh one
    proc = forked_python.run("train.py", [*args, f"hydra.run.dir={tmp_path}"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_keys_users_expect_from_lightning_and_wandb_are_reachable(tmp_path):
    cfg = compose_cfg(["logger=wandb", "logger.wandb.entity=me", "logger.wandb.group=g",
                       "logger.wandb.job_type=eval", "trainer.max_time=00:01:00:00",
                       "trainer.gradient_clip_val=1.0", "trainer.fast_dev_run=true",
                       "trainer.profiler=simple"], tmp_path)
    assert (cfg.logger.wandb.entity, cfg.logger.wandb.group, cfg.logger.wandb.job_type) == (
        "me", "g", "eval")
    assert cfg.trainer.max_time == "00:01:00:00" and cfg.trainer.gradient_clip_val == 1.0


@pytest.mark.parametrize("name", ["maml_ppo", "mt_ppo", "rl2_ppo", "mt_sac"])
def test_each_algorithm_default_lives_in_its_yaml_only(name, tmp_path):
    """conf/algorithm/<name>.yaml sets every key of its schema (the schema holds types only, the
    method's __init__ no defaults), and the keys are exactly what __init__ takes."""
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    cfg = compose_cfg([f"algorithm={name}"] + (["benchmark=mt10"] if name.startswith("mt") else []),
                      tmp_path)
    missing = [k for k in cfg.algorithm if OmegaConf.is_missing(cfg.algorithm, k)]
    assert not missing, f"conf/algorithm/{name}.yaml does not set {missing}"
    params = inspect.signature(get_class(cfg.algorithm._target_)).parameters
    assert all(p.default is inspect.Parameter.empty for p in params.values())  # no 2nd home
    assert set(params) - {"policy"} == set(cfg.algorithm) - {"_target_"}
