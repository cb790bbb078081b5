"""Two nodes on localhost: `torchrun --nnodes=2 --nproc-per-node=1` started twice (node ranks 0
and 1, static rendezvous at 127.0.0.1), `trainer.num_nodes=2`, gloo. Lightning takes the ranks
from torchrun (TorchElasticEnvironment) and trainer=ddp_cpu switches to plain ddp. The same
invariants as the 2-rank test: tests/test_ddp.py's tests are imported here and run against this
module's `ddp_run`."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY
from tests.test_ddp import (  # noqa: F401  (collected here, with this module's ddp_run)
    test_a_ddp_checkpoint_resumes_in_one_process,
    test_outer_gradient_is_the_mean_of_the_ranks_gradients,
    test_ranks_collect_different_tasks_and_all_steps_are_counted,
    test_two_ranks_end_with_identical_parameters,
)

pytestmark = pytest.mark.slow  # two full interpreter starts per node on 2 cores: see README


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_values(metrics_csv) -> dict[str, float]:
    """What train() returns as metrics, read back from the CSV: each key's last logged value."""
    last: dict[str, float] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return last


def _start_nodes(out: Path, overrides: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for var in [v for v in env if v.startswith("SLURM_")]:  # not a SLURM job, even under one
        env.pop(var)
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
         f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
         str(ROOT / "train.py"), *overrides, "trainer=ddp_cpu", "trainer.devices=1",
         "trainer.num_nodes=2", f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # one process group per node: torchrun, its rank, env workers
        for node in (0, 1)]


def _kill_nodes(nodes: list[subprocess.Popen]) -> None:
    """SIGKILL what is left of each node's process group (a hung rank outlives its torchrun)."""
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_nodes")
    nodes = _start_nodes(out, [*TINY, "+callbacks.rank_probe._target_=tests.test_ddp.RankProbe",
                               f"+callbacks.rank_probe.path={out}"])
    try:
        logs = [node.communicate(timeout=900)[0] for node in nodes]
    finally:
        _kill_nodes(nodes)
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1] and "distributed_backend=gloo" in logs[0]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return out, _last_values(out / "csv" / "metrics.csv"), ranks


def _rank_process(torchrun_pid: int) -> int:
    """The train.py process torchrun started (its one worker), by /proc."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    for pid in children:
        if "train.py" in Path(f"/proc/{pid}/cmdline").read_text():
            return int(pid)
    raise AssertionError(f"no train.py child of torchrun {torchrun_pid}: {children}")


def test_sigterm_to_one_rank_stops_both_after_the_same_iteration(tmp_path):
    """A signal can reach the ranks at different points of an iteration (scancel signals each
    task on its own; a preempted node signals only its own ranks). Here only rank 1 gets
    SIGTERM: both ranks stop after the same meta-iteration, rank 0 writes last.ckpt with both
    ranks' env state, and nothing hangs (Lightning's own handler broadcast from inside the
    signal handler, which paired with no collective on rank 0)."""
    long = [o for o in TINY if not o.startswith(("trainer.max_steps", "callbacks.last_"))]
    nodes = _start_nodes(tmp_path, [*long, "trainer.max_steps=100000",
                                    "callbacks.last_checkpoint.every_n_train_steps=100000"])
    try:
        metrics = tmp_path / "csv" / "metrics.csv"
        deadline = time.time() + 600
        while time.time() < deadline and (not metrics.exists()
                                          or metrics.read_text().count("\n") < 4):
            assert all(n.poll() is None for n in nodes), "a node ended before the signal"
            time.sleep(0.5)  # a few meta-iterations (no periodic checkpoint: every 100000)
        os.kill(_rank_process(nodes[1].pid), signal.SIGTERM)
        logs = [node.communicate(timeout=180)[0] for node in nodes]
    finally:
        _kill_nodes(nodes)
    assert "Received SIGTERM" in logs[1] and "Received SIGTERM" not in logs[0]
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    assert f"resume with ckpt_path={ckpt_path}" in logs[0], logs[0][-3000:]
    state = torch.load(ckpt_path, weights_only=True)
    assert state["global_step"] >= 3
    assert len(state["MetaWorldDataModule"]["env_checkpoints"]) == 2
    # both ranks stopped as stopped runs (143), after the same iteration: rank 0's summary
    assert f"stopped by SIGTERM after {state['global_step']}" in (tmp_path / "train.log").read_text()
