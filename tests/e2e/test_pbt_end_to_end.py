"""Population Based Training with real processes: real workers train a population of digits MLPs that copy
each other's weights and explore their learning rate and dropout, while a worker process and then the server
are killed with SIGKILL.

`sweeper serve` and `sweeper worker` run as subprocesses on a temporary SQLite file; everything is observed
through the REST API, through TensorBoard's own reader of the logs, and in the logs folder.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from e2e_processes import kill, pids_with, wait_until
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_faults_end_to_end import Service

pytestmark = pytest.mark.e2e

EPOCHS = 8
INTERVAL = 2
POPULATION = 4

PBT_SPEC = {
    "name": "pbt", "model": "mlp", "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-4, "max": 0.3, "log": True},
                "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5}, "units": 32, "batch_size": 128},
    "search": {"strategy": "pbt", "population": POPULATION, "interval_epochs": INTERVAL,
               "mutable": ["learning_rate", "dropout"], "seed": 3},
    "train": {"epochs": EPOCHS, "seed": 0},
}


def exploits(service: Service, trials: list[dict]) -> dict[tuple[int, int], dict]:
    """Every stored exploit decision, by (trial id, epoch)."""
    found = {}
    for trial in trials:
        for entry in service.get(f"/trials/{trial['id']}")["history"]:
            if (entry.get("decision") or {}).get("action") == "exploit":
                found[(trial["id"], entry["epoch"])] = entry["decision"]
    return found


def epoch_steps(folder: Path, tag: str) -> list[int]:
    """The steps of a scalar in a run folder, as TensorBoard reads them (tf.summary writes tensors)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Tensors(tag)] if tag in accumulator.Tags()["tensors"] else []


def kill_an_agent_mid_member(service: Service, sweep_id: int, tries: int = 5) -> int:
    """SIGKILL the worker process of a running member, and return that member's trial id.

    Members hand their workers over at every interval's end, so a kill can land between two members; the
    supervisor's log says which it was, and it restarts the killed worker for another try."""
    log = next(path for _, path in service.processes.started if path.name.startswith("worker"))

    def running_member_with_its_agent() -> tuple[str, list[int]] | None:
        # The server may still show a member on a worker killed a moment ago, whose process is not back yet.
        for trial in service.trials(sweep_id):
            if trial["state"] == "running" and (agents := pids_with("workers.agent", service.url, trial["worker_id"])):
                return trial["worker_id"], agents
        return None

    for _ in range(tries):
        worker, agents = wait_until(running_member_with_its_agent, 120, "a running member and its worker process")
        deaths = rf"worker {re.escape(worker)} killed by SIGKILL after [\d.]+s(?: while running trial (\d+))?"
        seen = len(re.findall(deaths, log.read_text()))
        kill(agents)
        death = wait_until(lambda: re.findall(deaths, log.read_text())[seen:], 60, f"the death of {worker}")[0]
        if death:
            return int(death)
    raise AssertionError(f"{tries} kills each landed between two members")


def test_a_population_exploits_and_explores_through_a_killed_worker_and_a_killed_server(processes, tmp_path):
    service = Service(processes, tmp_path)
    service.start_worker(cpu_workers=2)
    sweep_id = service.submit(PBT_SPEC)
    wait_until(lambda: any(len(t.get("lineage") or []) > 1 for t in service.trials(sweep_id)), 400,
               "a member that copied another")

    # A worker process dies mid-member: its member goes back to the queue and resumes from its checkpoint.
    killed_member = kill_an_agent_mid_member(service, sweep_id)
    before = exploits(service, service.trials(sweep_id))
    service.server.send_signal(signal.SIGKILL)
    service.server.wait()
    service.start_server("server-restarted")
    sweep = service.wait_for(sweep_id, "completed", timeout=900)

    trials = service.trials(sweep_id)
    after = exploits(service, trials)
    assert {key: after[key] for key in before} == before, "an exploit answered before the kills changed"
    assert sweep["trial_counts"]["completed"] == POPULATION, processes.logs()
    assert after, "no member of four copied another in four intervals"
    assert next(t for t in trials if t["id"] == killed_member)["attempts"] > 1, "the killed member was not retried"
    numbers = {t["number"]: t for t in trials}
    for trial in trials:
        history = service.get(f"/trials/{trial['id']}")["history"]
        assert [entry["epoch"] for entry in history] == list(range(EPOCHS)), (trial["number"], history)
        lineage = trial["lineage"]
        assert lineage[0]["start_epoch"] == 0 and lineage[0]["parent_number"] is None
        assert trial["hparams"] == lineage[-1]["hparams"]
        for segment in lineage[1:]:
            # Each later segment began where an exploit answered: the epoch after the parent's snapshot.
            assert segment["start_epoch"] == segment["parent_epoch"] + 1
            assert (segment["parent_epoch"] + 1) % INTERVAL == 0
            assert segment["parent_number"] in numbers and segment["parent_number"] != trial["number"]
            assert (trial["id"], segment["parent_epoch"]) in after
        # TensorBoard: the member's curve has every epoch once, across its exploits; one session per segment.
        folder = tmp_path / "runs" / str(sweep_id) / f"trial-{trial['number']:04d}"
        assert epoch_steps(folder / "train", "epoch_loss") == list(range(EPOCHS)), trial["number"]
        segments = sorted(path.name for path in folder.glob("segment-*"))
        assert len(segments) == len(lineage), (trial["number"], segments)
    # No member may copy a snapshot any more: none is left. The server deletes them once the sweep's end has
    # committed, and the last member's worker its checkpoint once the answer comes: a moment after it reads so.
    wait_until(lambda: not list((tmp_path / "runs" / str(sweep_id)).rglob("*.weights.h5")), 30,
               "no snapshot or checkpoint left")
