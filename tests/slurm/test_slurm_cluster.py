"""The test cluster keeps itself tidy: daemons that a killed run left behind end when the next run starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, processes_of

pytestmark = pytest.mark.e2e


def test_a_cluster_left_running_by_a_killed_run_is_ended_by_the_next_start(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # A run killed before its teardown: its daemons live on, their starter does not.
    starter = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom slurm_cluster import SlurmCluster\n"
        f"SlurmCluster.start(Path({str(tmp_path / 'left')!r}))\nprint('up', flush=True)\ntime.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    try:
        assert starter.stdout.readline().strip() == "up"
    finally:
        starter.kill()
        starter.wait()
    left = SlurmCluster(tmp_path / "left")
    assert left.run("sinfo", "--noheader", "--format=%t").strip() in ("idle", "mix")
    assert processes_of(left.folder)

    SlurmCluster.start(tmp_path / "next").stop()

    assert not processes_of(left.folder)
    # The session's own cluster, whose process lives, was left alone.
    assert slurm_cluster.run("sinfo", "--noheader", "--format=%t").strip() in ("idle", "mix", "alloc")
