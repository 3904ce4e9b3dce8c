"""GPU discovery through NVML (a stub module) or nvidia-smi (faked on PATH), the --gpus selection rules,
and the memory share of a GPU that several workers use."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sweeper import SweeperError
from workers.gpus import MEMORY_MARGIN_MB, Gpu, GpuSelectionError, discover_gpus, memory_share_mb, select_gpus

GPUS = [Gpu("0", 81559, "H100"), Gpu("1", 81559, "H100"), Gpu("2", 16384, "T4")]


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


class NvmlError(Exception):
    """Stands in for pynvml.NVMLError."""


def stub_nvml(memory_mb: list[int], fail_init: bool = False) -> Any:
    """A stand-in for the pynvml module: the calls discovery makes, on GPUs of the given memory."""
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise NvmlError("Driver Not Loaded")

    return SimpleNamespace(
        calls=calls, nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(memory_mb),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: b"NVIDIA H100" if handle == 0 else "Tesla T4",
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(total=memory_mb[handle] * 2**20, used=0))


def test_nvml_lists_the_gpus_with_their_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, f'touch "{tmp_path}/asked"\n')
    nvml = stub_nvml([81559, 15360])

    assert discover_gpus(nvml=nvml) == [Gpu("0", 81559, "NVIDIA H100"), Gpu("1", 15360, "Tesla T4")]
    assert nvml.calls == ["init", "shutdown"]
    assert not (tmp_path / "asked").exists()  # nvidia-smi was not needed


def test_nvidia_smi_answers_when_nvml_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, 'printf "0, 16384, Tesla T4\\n"\n')

    with caplog.at_level(logging.INFO, logger="workers.gpus"):
        assert discover_gpus(nvml=stub_nvml([81559], fail_init=True)) == [Gpu("0", 16384, "Tesla T4")]
    assert "NVML cannot list GPUs (NvmlError: Driver Not Loaded); asking nvidia-smi" in caplog.text


def test_the_installed_nvml_binding_without_a_driver_falls_back_to_nvidia_smi(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pynvml")
    fake_nvidia_smi(tmp_path, monkeypatch, 'printf "0, 16384, Tesla T4\\n"\n')
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this host has a working NVIDIA driver")

    assert discover_gpus() == [Gpu("0", 16384, "Tesla T4")]


def test_discovers_the_gpus_nvidia_smi_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, f'echo "$@" > "{tmp_path}/args"\n'
                                           'printf "0, 81559, NVIDIA H100 80GB HBM3\\n1, [N/A], Tesla T4\\n"\n')

    assert discover_gpus(nvml=None) == [Gpu("0", 81559, "NVIDIA H100 80GB HBM3"), Gpu("1", None, "Tesla T4")]
    assert (tmp_path / "args").read_text().split() == ["--query-gpu=index,memory.total,name",
                                                       "--format=csv,noheader,nounits"]


def test_a_failing_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "NVIDIA-SMI has failed: no driver" >&2\nexit 9\n')

    with caplog.at_level(logging.WARNING, logger="workers.gpus"):
        assert discover_gpus(nvml=None) == []
    assert "exited with code 9 (NVIDIA-SMI has failed: no driver)" in caplog.text


def test_a_missing_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    assert discover_gpus(nvml=None) == []


def test_a_hanging_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "exec /bin/sleep 10\n")

    assert discover_gpus(timeout=0.3, nvml=None) == []


@pytest.mark.parametrize(("selection", "expected"), [
    ("all", ["0", "1", "2"]),
    ("ALL", ["0", "1", "2"]),
    ("none", []),
    ("0,2", ["0", "2"]),
    (" 2 , 0 ", ["2", "0"]),
    ("1,1", ["1"]),
])
def test_selection_resolves_against_the_discovered_gpus(selection: str, expected: list[str]) -> None:
    chosen = select_gpus(selection, GPUS)

    assert [gpu.index for gpu in chosen] == expected
    assert all(gpu in GPUS for gpu in chosen)  # with their memory, for sharing


def test_selecting_all_without_gpus_selects_none() -> None:
    assert select_gpus("all", []) == []


def test_an_unknown_index_is_named_with_the_discovered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown GPU index '5' in --gpus '0,5'; discovered GPUs: 0, 1"):
        select_gpus("0,5", GPUS[:2])


def test_an_index_on_a_host_without_gpus_says_none_were_found() -> None:
    with pytest.raises(GpuSelectionError, match=r"unknown GPU index '0'.*discovered GPUs: none"):
        select_gpus("0", [])


@pytest.mark.parametrize("selection", ["", "0,,1", ","])
def test_a_malformed_selection_is_refused(selection: str) -> None:
    with pytest.raises(GpuSelectionError, match="must be 'all', 'none' or indices like '0,2'") as caught:
        select_gpus(selection, GPUS)
    assert isinstance(caught.value, SweeperError)


@pytest.mark.parametrize(("gpu", "trials", "share"), [
    (Gpu("0", 81559), 1, None),                           # alone: it grows instead
    (Gpu("0", 81559), 2, 81559 // 2 - MEMORY_MARGIN_MB),
    (Gpu("0", 16384), 4, 4096 - MEMORY_MARGIN_MB),
    (Gpu("0", None), 4, None),                            # unknown memory: each worker grows
])
def test_a_shared_gpu_gives_each_worker_an_equal_share_less_a_margin(gpu: Gpu, trials: int, share: int | None) -> None:
    assert memory_share_mb(gpu, trials) == share


def test_a_share_too_small_to_train_in_is_refused() -> None:
    with pytest.raises(GpuSelectionError, match=r"--trials-per-gpu 16 leaves 0 MB per trial on GPU 2 \(8192 MB, "
                                                r"less 768 MB per process\); each trial needs at least 256 MB"):
        memory_share_mb(Gpu("2", 8192), 16)


def test_worker_side_modules_do_not_import_tensorflow(tmp_path: Path) -> None:
    # The supervisor must never hold a GPU itself, not even while it discovers GPUs, starts children or
    # reports a dead child's trial; the agent imports TensorFlow only for its first trial.
    code = ("import sys, workers.gpus, workers.supervisor, workers.agent, workers.failures, sweeper.client\n"
            "from workers.supervisor import Supervisor\n"
            "from sweeper.training.checkpoints import TrialCheckpoint\n"
            "gpus = workers.gpus.discover_gpus(timeout=5)\n"
            "Supervisor('http://127.0.0.1:9', [workers.gpus.Gpu('0', 16384)], host='box', trials_per_gpu=2)\n"
            f"TrialCheckpoint({str(tmp_path / 'checkpoint')!r}).delete()\n"
            "loaded = [m for m in ('tensorflow', 'keras', 'fastapi', 'sqlalchemy', 'api') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin", "SWEEPER_LOCK_DIR": str(tmp_path / "ids")})
