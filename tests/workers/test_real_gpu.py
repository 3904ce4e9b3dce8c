"""On a machine with an NVIDIA GPU: a worker child trains a real trial on exactly the GPU it was given.

Everything else about GPU placement is tested with a fake nvidia-smi and a stub NVML; this is the
check that the real driver, TensorFlow and the supervisor's environment agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.gpus import discover_gpus

GPUS = discover_gpus()
pytestmark = pytest.mark.skipif(not GPUS, reason="needs an NVIDIA GPU (found none through NVML or nvidia-smi)")

SPEC = """\
name: gpu-check
model: mlp
dataset: digits
objective: {metric: val_accuracy}
hparams: {units: 32}
search: {strategy: grid}
train: {epochs: 2}
"""


def test_a_child_sees_only_its_gpu_and_tensorflow_finds_it() -> None:
    first = GPUS[0]
    code = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(first.index), "TF_CPP_MIN_LOG_LEVEL": "2"}

    seen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)

    assert seen.stdout.strip().splitlines()[-1] == "1", seen.stderr


def test_sweeper_run_trains_on_the_first_gpu(tmp_path: Path) -> None:
    (tmp_path / "gpu.yaml").write_text(SPEC)
    command = [str(Path(sys.executable).parent / "sweeper"), "run", "gpu.yaml", "--gpus", str(GPUS[0].index),
               "--database-url", "sqlite:///gpu.db", "--logdir", "runs"]

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 completed" in result.stdout
    assert f"GPU {GPUS[0].index}" in (tmp_path / "runs" / "workers.log").read_text()
