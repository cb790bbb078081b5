"""A one-node SLURM cluster for the `slurm` tests: started once per session by
scripts/slurm/start.sh (munged + slurmctld + slurmd, state under a temp dir), stopped at the end.
Where it cannot run (no slurm-wlm/munge, not root) every `slurm` test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPTS = ROOT / "scripts" / "slurm"


def _missing() -> str | None:
    absent = [exe for exe in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue")
              if shutil.which(exe) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd starts jobs as their user)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The cluster's state dir; SLURM_CONF points every SLURM command (and submitit) at it."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run([str(SCRIPTS / "start.sh"), str(state)], capture_output=True,
                           text=True, timeout=120)
    if start.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(state)], timeout=60)
        pytest.fail(f"local SLURM cluster did not start:\n{start.stdout}{start.stderr}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run([str(SCRIPTS / "stop.sh"), str(state)], timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
