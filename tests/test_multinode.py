"""Two nodes on localhost: `torchrun --nnodes=2 --nproc-per-node=1` started twice (node ranks 0
and 1, static rendezvous at 127.0.0.1), `trainer.num_nodes=2`, gloo. Lightning takes the ranks
from torchrun (TorchElasticEnvironment) and trainer=ddp_cpu switches to plain ddp. The same
invariants as the 2-rank test: tests/test_ddp.py's tests are imported here and run against this
module's `ddp_run`."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

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


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_nodes")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    for var in [v for v in env if v.startswith("SLURM_")]:  # not a SLURM job, even under one
        env.pop(var)
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
         f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
         str(ROOT / "train.py"), *TINY, "trainer=ddp_cpu", "trainer.devices=1",
         "trainer.num_nodes=2", "+callbacks.rank_probe._target_=tests.test_ddp.RankProbe",
         f"+callbacks.rank_probe.path={out}", f"hydra.run.dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)]
    logs = [node.communicate(timeout=900)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1] and "distributed_backend=gloo" in logs[0]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return out, _last_values(out / "csv" / "metrics.csv"), ranks
