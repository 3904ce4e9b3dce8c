"""GPU discovery through nvidia-smi (faked on PATH) and the --gpus selection rules."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper import SweeperError
from workers.gpus import GpuSelectionError, discover_gpus, select_gpus


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_discovers_the_indices_nvidia_smi_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, f'echo "$@" > "{tmp_path}/args"\nprintf "0\\n1\\n"\n')

    assert discover_gpus() == ["0", "1"]
    assert (tmp_path / "args").read_text().split() == ["--query-gpu=index", "--format=csv,noheader"]


def test_a_failing_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "NVIDIA-SMI has failed: no driver" >&2\nexit 9\n')

    with caplog.at_level(logging.WARNING, logger="workers.gpus"):
        assert discover_gpus() == []
    assert "exited with code 9 (NVIDIA-SMI has failed: no driver)" in caplog.text


def test_a_missing_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    assert discover_gpus() == []


def test_a_hanging_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "exec /bin/sleep 10\n")

    assert discover_gpus(timeout=0.3) == []


@pytest.mark.parametrize(("selection", "expected"), [
    ("all", ["0", "1", "2"]),
    ("ALL", ["0", "1", "2"]),
    ("none", []),
    ("0,2", ["0", "2"]),
    (" 2 , 0 ", ["2", "0"]),
    ("1,1", ["1"]),
])
def test_selection_resolves_against_the_discovered_gpus(selection: str, expected: list[str]) -> None:
    assert select_gpus(selection, ["0", "1", "2"]) == expected


def test_selecting_all_without_gpus_selects_none() -> None:
    assert select_gpus("all", []) == []


def test_an_unknown_index_is_named_with_the_discovered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU index '5' in --gpus '0,5'; discovered GPUs: 0, 1"):
        select_gpus("0,5", ["0", "1"])


def test_an_index_on_a_host_without_gpus_says_none_were_found() -> None:
    with pytest.raises(GpuSelectionError, match=r"unknown GPU index '0'.*discovered GPUs: none"):
        select_gpus("0", [])


@pytest.mark.parametrize("selection", ["", "0,,1", ","])
def test_a_malformed_selection_is_refused(selection: str) -> None:
    with pytest.raises(GpuSelectionError, match="must be 'all', 'none' or indices like '0,2'") as caught:
        select_gpus(selection, ["0", "1"])
    assert isinstance(caught.value, SweeperError)


def test_worker_side_modules_do_not_import_tensorflow() -> None:
    # The supervisor must never hold a GPU itself; the agent imports TensorFlow only for its first trial.
    code = ("import sys, workers.gpus, workers.supervisor, workers.agent, sweeper.client; "
            "loaded = [m for m in ('tensorflow', 'keras', 'fastapi', 'sqlalchemy', 'api') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
