"""One fixture composes the real config with Hydra's compose API and shrinks it; tests copy it."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import metarl_lightning.config  # noqa: F401  (registers the structured schemas)
from metarl_lightning.envs import benchmarks as _benchmarks

os.environ["WANDB_MODE"] = "offline"
ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

TINY = [
    "benchmark.max_episode_steps=10",
    "benchmark.meta_batch_size=2",
    "model=mlp",
    "model.hidden_dim=16",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "algorithm.outer_epochs=2",
    # the in-process reference collector on a SyncVectorEnv: no worker processes to start per
    # test (~3-5 s each on 2 cores); tests of the default rollout workers add
    # WORKERS (test_workers.py checks the two paths give identical meta-batches)
    "data.collector=vector",
    "data.vector_strategy=sync",
    "callbacks.meta_eval.num_evals=1",
    "callbacks.meta_eval.mt_episodes=1",
    "eval.adaptation_episodes=2",
    "eval.meta_batch_size=1",
    "eval.evaluation_episodes=1",
    "callbacks.last_checkpoint.every_n_train_steps=1",
]


WORKERS = "data.collector=workers"  # the default collector: rollout worker processes


def compose_cfg(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.root_dir = str(ROOT)
    return cfg


def algorithm_kwargs(name: str, **overrides) -> dict:
    """The hyperparameters of conf/algorithm/<name>.yaml (their one home) as keyword arguments,
    for tests that build a method directly; no scheduler unless given."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(CONF) / "algorithm" / f"{name}.yaml")
    keys = {k: v for k, v in OmegaConf.to_container(cfg).items()
            if k not in ("defaults", "_target_", "optimizer", "scheduler")}
    return {**keys, "scheduler": None, **overrides}


@pytest.fixture
def tiny_cfg(tmp_path):
    """tiny_cfg(*overrides, out=dir): the shrunk real config, writing under `out` (tmp_path)."""
    return lambda *extra, out=None: compose_cfg(TINY + list(extra), out or tmp_path)


# Meta-World Benchmark objects (goal lists) for the whole session: building one takes seconds
# (ML1 ~2 s, MT10 ~7 s, ML10 ~11 s on 2 cores) and the product's cache keeps only 4, which the
# suite's mix of benchmarks and seeds (1, 2, 3) kept evicting. Read-only objects: sharing them
# changes nothing a test sees (make_env_fns slices their task lists, never mutates them).
_benchmarks.benchmark = functools.lru_cache(maxsize=None)(_benchmarks.benchmark.__wrapped__)


# `python <script> <args>` at a fraction of an interpreter start: one server process imports
# train.py's and evaluate.py's dependencies once (~7 s on 2 cores, mostly Lightning) and forks a
# child per run that executes the script as __main__ with its own argv, cwd, environment,
# stdout and stderr, and exits as the interpreter would (SystemExit codes; a traceback and 1 on
# an uncaught exception). Only for runs that start no processes of their own (a spawned worker
# would re-import the script as a fresh __main__). Fresh interpreters stay where they are the
# point: test_methods.py's mismatch error, test_evaluation.py's evaluate.py, test_runlog.py's
# base install, the multirun over every experiment, the interrupt.
_FORK_SERVER = r"""
import json, logging, os, runpy, signal, sys, traceback
sys.path.insert(0, os.getcwd())  # the repo root, also for children that chdir elsewhere
for script in ("train.py", "evaluate.py"):
    runpy.run_path(script, run_name="__preload__")  # the imports, not main
root = os.getcwd()
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.alarm(job["timeout"])  # a hung run dies with SIGALRM instead of hanging the tests
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        script = os.path.join(root, job["script"])
        sys.argv, code = [script, *job["args"]], 0
        try:
            if job["module"]:  # python -m <module>
                runpy.run_module(job["script"], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        logging.shutdown()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code or 0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkedPython:
    """run(script, args) -> subprocess.CompletedProcess, as subprocess.run would give;
    module=True: `python -m script args`."""

    def __init__(self, out: Path):
        self.out, self.runs = out, 0
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVER], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, script: str, args: list[str], cwd: Path = ROOT, env: dict | None = None,
            timeout: int = 600, module: bool = False) -> subprocess.CompletedProcess:
        self.runs += 1
        out, err = self.out / f"{self.runs}.stdout", self.out / f"{self.runs}.stderr"
        self.proc.stdin.write(json.dumps({"script": script, "args": args, "cwd": str(cwd),
                                          "env": env or {}, "timeout": timeout, "module": module,
                                          "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (exit {self.proc.wait()})"
        return subprocess.CompletedProcess([script, *args], int(line), out.read_text(),
                                           err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def forked_python(tmp_path_factory):
    server = ForkedPython(tmp_path_factory.mktemp("forked_python"))
    yield server
    server.close()
