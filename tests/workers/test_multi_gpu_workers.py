"""Workers for multi-GPU trials: GPUs grouped by how they are linked (a fake `nvidia-smi` with its
`topo -m` matrix), one child per group seeing the whole group, how --gpus, --gpus-per-trial,
--trials-per-gpu and --cpu-devices combine and which combinations are refused at start, and a real
retried trial of 2 replicas (a CPU split into 2 devices) resuming from its checkpoint on another worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import workers.gpus
from sweeper.client import Client
from workers.gpus import Gpu, GpuSelectionError, discover_gpus, discover_links, group_gpus, parse_topology, plan_groups
from workers.supervisor import Supervisor
from workers_testing import digits_spec, runs, wait_until

NOWHERE = "http://127.0.0.1:9"  # the fake children never connect

# Four GPUs whose NVLink pairs are 0+2 and 1+3, not 0+1 and 2+3 as index order would pair them; the
# header and legend as nvidia-smi prints them (with its underline escapes), a NIC column included.
TOPOLOGY = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tSYS\tNV12\tPHB\tPIX\t0-23\t0\t\tN/A\n"
    "GPU1\tSYS\t X \tPHB\tNV12\tSYS\t0-23\t0\t\tN/A\n"
    "GPU2\tNV12\tPHB\t X \tSYS\tSYS\t0-23\t0\t\tN/A\n"
    "GPU3\tPHB\tNV12\tSYS\t X \tSYS\t0-23\t0\t\tN/A\n"
    "NIC0\tPIX\tSYS\tSYS\tSYS\t X \t\t\t\t\n\n"
    "Legend:\n\n  X    = Self\n  SYS  = Connection traversing PCIe as well as the SMP interconnect\n"
    "  PIX  = Connection traversing at most a single PCIe bridge\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n\nNIC Legend:\n\n  NIC0: mlx5_0\n")
# The same host on PCIe only: 0+3 behind one switch (PIX), 1+2 behind another.
PCIE_TOPOLOGY = ("\tGPU0\tGPU1\tGPU2\tGPU3\tCPU Affinity\n"
                 "GPU0\t X \tSYS\tSYS\tPIX\t0-23\n"
                 "GPU1\tSYS\t X \tPIX\tSYS\t0-23\n"
                 "GPU2\tSYS\tPIX\t X \tSYS\t0-23\n"
                 "GPU3\tPIX\tSYS\tSYS\t X \t0-23\n")


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: str, topology: str = TOPOLOGY) -> None:
    """`nvidia-smi` on PATH answering the GPU query with `gpus` and `topo -m` with `topology`; NVML left out,
    so that a real driver on the machine cannot answer instead."""
    monkeypatch.setattr(workers.gpus, "_import_nvml", lambda: None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "topology.txt").write_text(topology)
    (bin_dir / "nvidia-smi").write_text(
        f'#!/bin/sh\nif [ "$1" = topo ]; then cat "{bin_dir / "topology.txt"}"; else printf "{gpus}"; fi\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


FOUR_H100 = "".join(f"{index}, 81559, NVIDIA H100\\n" for index in range(4))


def option(run: dict[str, Any], name: str) -> str | None:
    argv = run["argv"]
    return argv[argv.index(name) + 1] if name in argv else None


def indices(groups: list[tuple[Gpu, ...]]) -> list[list[str]]:
    return [[gpu.index for gpu in group] for group in groups]


def test_nvlink_pairs_out_of_index_order_are_grouped_by_topology(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_H100)
    gpus = discover_gpus(nvml=None)

    links = discover_links(gpus, nvml=None)

    assert links[frozenset(("0", "2"))] == links[frozenset(("1", "3"))] == 112
    assert indices(group_gpus(gpus, 2, links)) == [["0", "2"], ["1", "3"]]


def test_the_matrix_of_a_real_one_gpu_host_reads_as_no_links() -> None:
    # As nvidia-smi printed it on a one-GPU H200 host: underlined header, affinity columns, no GPU pairs.
    printed = ("\t\x1b[4mGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
               "GPU0\t X \t0-15\t0\t\tN/A\n\nLegend:\n\n  X    = Self\n"
               "  NV#  = Connection traversing a bonded set of # NVLinks\n")

    assert parse_topology(printed) == {}


def test_gpus_behind_one_pcie_switch_are_grouped_together() -> None:
    gpus = [Gpu(str(index)) for index in range(4)]

    assert indices(group_gpus(gpus, 2, parse_topology(PCIE_TOPOLOGY))) == [["0", "3"], ["1", "2"]]


def test_without_a_topology_gpus_are_grouped_by_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_H100, topology="")
    gpus = discover_gpus(nvml=None)

    assert discover_links(gpus, nvml=None) == {}
    assert indices(group_gpus(gpus, 2)) == [["0", "1"], ["2", "3"]]


def test_each_group_gets_one_child_that_sees_all_of_its_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fake_child: list[str]) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_H100)
    gpus = discover_gpus(nvml=None)

    supervisor = Supervisor(NOWHERE, gpus, host="box", child_command=fake_child, gpus_per_trial=2,
                            links=discover_links(gpus, nvml=None))
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-gpu0+2", "box-gpu1+3"]
    for worker_id, group in (("box-gpu0+2", "0,2"), ("box-gpu1+3", "1,3")):
        [run] = runs(tmp_path, worker_id)
        assert (run["CUDA_VISIBLE_DEVICES"], run["CUDA_DEVICE_ORDER"]) == (group, "PCI_BUS_ID")
        assert (run["TF_FORCE_GPU_ALLOW_GROWTH"], run["SWEEPER_GPU_MEMORY_MB"]) == ("true", None)
        assert (option(run, "--gpu"), option(run, "--gpus")) == (group, "2")


def test_a_group_of_two_with_two_trials_per_group_gives_both_children_both_gpus_with_memory_capped(
        tmp_path: Path, fake_child: list[str]) -> None:
    gpus = [Gpu("0", 81559, "H100"), Gpu("1", 40960, "A100")]

    supervisor = Supervisor(NOWHERE, gpus, host="box", child_command=fake_child, gpus_per_trial=2, trials_per_gpu=2)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-gpu0+1-0", "box-gpu0+1-1"]
    for worker_id in supervisor.worker_ids:
        [run] = runs(tmp_path, worker_id)
        # One limit for every GPU of the process: the smaller GPU's share.
        assert (run["CUDA_VISIBLE_DEVICES"], run["SWEEPER_GPU_MEMORY_MB"]) == ("0,1", str(40960 // 2 - 768))
        assert run["TF_FORCE_GPU_ALLOW_GROWTH"] is None
        assert option(run, "--gpus") == "2"


def test_cpu_workers_split_into_devices_present_them_as_their_gpus(tmp_path: Path, fake_child: list[str]) -> None:
    supervisor = Supervisor(NOWHERE, [], cpu_workers=1, host="box", child_command=fake_child, gpus_per_trial=2,
                            cpu_devices=2)
    supervisor.start()

    assert supervisor.wait() == 0
    [run] = runs(tmp_path, "box-cpu0")
    assert (run["CUDA_VISIBLE_DEVICES"], run["SWEEPER_CPU_DEVICES"]) == ("-1", "2")
    assert (option(run, "--gpu"), option(run, "--gpus")) == (None, "2")


def test_one_gpu_per_trial_keeps_one_child_per_gpu_with_its_old_id(tmp_path: Path, fake_child: list[str]) -> None:
    supervisor = Supervisor(NOWHERE, ["0", "1"], host="box", child_command=fake_child)
    supervisor.start()

    assert supervisor.wait() == 0
    assert supervisor.worker_ids == ["box-gpu0", "box-gpu1"]
    assert [option(runs(tmp_path, worker_id)[0], "--gpus") for worker_id in supervisor.worker_ids] == ["1", "1"]


@pytest.mark.parametrize(("gpus", "options", "message"), [
    (4, {"gpus_per_trial": 3}, "--gpus-per-trial 3 needs the selected GPUs to form groups of 3, but --gpus selects "
                               "4 GPU(s) (0,1,2,3); select 3 GPUs or a multiple of 3 with --gpus"),
    (1, {"gpus_per_trial": 2}, "--gpus-per-trial 2 needs the selected GPUs to form groups of 2, but --gpus selects "
                               "1 GPU(s) (0); select at least 2 GPUs with --gpus, or lower --gpus-per-trial to 1"),
    (0, {"gpus_per_trial": 2}, "--gpus-per-trial 2 needs GPUs, but no GPU is selected (--gpus none, or none was "
                               "found); for testing on a CPU, --cpu-devices 2 splits each CPU worker into 2 devices"),
    (2, {"cpu_devices": 2}, "--cpu-devices 2 splits the CPU of CPU workers, but --gpus selects GPU(s) 0,1; use it "
                            "with --gpus none"),
    (2, {"gpus_per_trial": 2, "trials_per_gpu": 64}, "--trials-per-gpu 64 leaves 0 MB per trial on GPU 0"),
])
def test_impossible_combinations_are_refused_naming_the_options(gpus: int, options: dict[str, int],
                                                                message: str) -> None:
    with pytest.raises(GpuSelectionError) as refused:
        plan_groups([Gpu(str(index), 16384) for index in range(gpus)], **options)
    assert message in str(refused.value)


@pytest.mark.parametrize("command", ["worker", "run"])
def test_the_cli_refuses_four_gpus_in_groups_of_three_before_starting_anything(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli import app

    fake_nvidia_smi(tmp_path, monkeypatch, FOUR_H100)
    spec = tmp_path / "digits.json"
    spec.write_text(json.dumps(digits_spec()))
    arguments = ["worker", "--server", NOWHERE] if command == "worker" else \
        ["run", str(spec), "--logdir", str(tmp_path / "runs"), "--database-url", f"sqlite:///{tmp_path / 'db'}"]

    result = CliRunner().invoke(app, [*arguments, "--gpus-per-trial", "3"])

    assert result.exit_code == 2, result.output
    assert "--gpus-per-trial 3 needs the selected GPUs to form groups of 3, but --gpus selects 4 GPU(s)" in \
        " ".join(result.output.split())
    assert not (tmp_path / "db").exists()


def test_sweeper_run_takes_the_group_size_from_the_spec_and_refuses_a_cpu_without_devices_for_it(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    spec = tmp_path / "pairs.json"
    spec.write_text(json.dumps(digits_spec(train={"epochs": 1, "gpus_per_trial": 2})))

    result = CliRunner().invoke(app, ["run", str(spec), "--gpus", "none", "--logdir", str(tmp_path / "runs"),
                                      "--database-url", f"sqlite:///{tmp_path / 'db'}"])

    assert result.exit_code == 2, result.output
    assert "--gpus-per-trial 2 needs GPUs, but no GPU is selected" in " ".join(result.output.split())
    assert "--cpu-devices 2" in result.output
    assert not (tmp_path / "db").exists()


@pytest.mark.training
def test_a_retried_two_gpu_trial_resumes_from_its_checkpoint_on_another_worker_and_never_on_a_one_gpu_one(
        client: Client, server: Any, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = 5
    sweep = client.create_sweep(digits_spec(trials=1, hparams={"units": {"type": "discrete", "values": [8]},
                                                               "batch_size": 4},
                                            train={"epochs": epochs, "gpus_per_trial": 2}))
    single = Supervisor(server.url, [], cpu_workers=1, host="one", idle_exit=120)
    first = Supervisor(server.url, [], cpu_workers=1, host="boxa", gpus_per_trial=2, cpu_devices=2, max_restarts=0,
                       output=tmp_path / "first.log")
    second = Supervisor(server.url, [], cpu_workers=1, host="boxb", gpus_per_trial=2, cpu_devices=2, idle_exit=3,
                        output=tmp_path / "second.log")
    single.start()
    try:
        first.start()
        wait_until(lambda: client.list_trials(sweep["id"])["data"], timeout=60)
        [trial] = client.list_trials(sweep["id"])["data"]
        wait_until(lambda: len(client.get_trial(trial["id"])["history"]) >= 2, timeout=120)
        process = first.slots[0].process
        assert process is not None
        process.kill()
        assert first.wait() == 1  # not restarted: its trial must go to another worker
        assert client.get_trial(trial["id"])["state"] == "pending"

        second.start()
        assert second.wait() == 0
    finally:
        for supervisor in (first, second, single):
            supervisor.stop(timeout=5)

    done = client.get_trial(trial["id"])
    assert (done["state"], done["attempts"], done["worker_id"]) == ("completed", 2, "boxb-cpu0")
    assert [point["epoch"] for point in done["history"]] == list(range(epochs))
    workers = {worker["id"]: worker for worker in client.list_workers()["data"]}
    assert (workers["one-cpu0"]["gpus"], workers["boxb-cpu0"]["gpus"]) == (1, 2)
    log = (tmp_path / "second.log").read_text()
    assert "resumes after epoch" in log and "trains on 2 replicas" in log and "global batch size 8" in log
    trial_dir = tmp_path / "runs" / str(sweep["id"]) / f"trial-{trial['number']:04d}"
    train = EventAccumulator(str(trial_dir / "train"), size_guidance={"tensors": 0})
    train.Reload()
    assert [event.step for event in train.Tensors("epoch_learning_rate")] == list(range(epochs))


def _nvml_with_topology(nvlink_pairs: set[frozenset[int]]) -> Any:
    """A stand-in for pynvml on 4 GPUs: all under one host bridge (HOSTBRIDGE, 30), except 0+3 behind one
    PCIe switch (SINGLE, 10); each pair in `nvlink_pairs` joined by 4 NVLinks."""
    from types import SimpleNamespace

    def common_ancestor(first: int, second: int) -> int:
        return 10 if {first, second} == {0, 3} else 30

    def link_state(handle: int, link: int) -> int:
        return int(link < 4 * sum(handle in pair for pair in nvlink_pairs))

    def remote(handle: int, link: int) -> Any:
        peers = sorted(next(iter(pair - {handle})) for pair in nvlink_pairs if handle in pair)
        return SimpleNamespace(busId=f"0000:{peers[link // 4]:02x}:00.0".encode())

    return SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetPciInfo=lambda handle: SimpleNamespace(busId=f"0000:{handle:02x}:00.0"),
        nvmlDeviceGetTopologyCommonAncestor=common_ancestor, nvmlDeviceGetNvLinkState=link_state,
        nvmlDeviceGetNvLinkRemotePciInfo=remote, NVML_NVLINK_MAX_LINKS=8)


def test_nvml_reports_nvlink_and_pcie_links_for_grouping() -> None:
    gpus = [Gpu(str(index)) for index in range(4)]

    nvlinked = discover_links(gpus, nvml=_nvml_with_topology({frozenset((0, 2)), frozenset((1, 3))}))
    pcie_only = discover_links(gpus, nvml=_nvml_with_topology(set()))

    assert nvlinked[frozenset(("0", "2"))] == 104 and nvlinked[frozenset(("0", "1"))] == 3
    assert indices(group_gpus(gpus, 2, nvlinked)) == [["0", "2"], ["1", "3"]]
    assert indices(group_gpus(gpus, 2, pcie_only)) == [["0", "3"], ["1", "2"]]
