"""Population Based Training on the server: members taking turns on fewer workers, exploit answers naming a
top-quarter donor's snapshot, the same answer to a repeated report and after a restart, a lost worker's
member resumed with its lineage, and snapshots deleted once no member may copy them."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from api.settings import Settings
from api_testing import API, Worker, create_sweep, get_sweep, get_trial

INTERVAL, EPOCHS, POPULATION = 2, 6, 4


def pbt_spec(population: int = POPULATION, **search: Any) -> dict[str, Any]:
    return {
        "name": "pbt", "model": "mlp", "dataset": "digits",
        "objective": {"metric": "val_loss", "goal": "minimize"},
        "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
                    "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5},
                    "units": {"type": "discrete", "values": [16, 32, 64]}},
        "search": {"strategy": "pbt", "population": population, "interval_epochs": INTERVAL,
                   "mutable": ["learning_rate", "dropout"], "seed": 3, **search},
        "train": {"epochs": EPOCHS},
    }


def loss(number: int, epoch: int) -> float:
    """Member k's val_loss: the higher its number, the better (so members 1 and 2 lag behind 3 and 4)."""
    return 10.0 - number - epoch * 0.1


class Fleet:
    """Simulated workers: each claims a member, trains it from its epochs done (a member's progress stands for
    its checkpoint), writes a snapshot file at each boundary before reporting it, and obeys the answer."""

    def __init__(self, client: TestClient, workers: int):
        self.workers = [Worker(client, f"sim-{k}") for k in range(workers)]
        self.done: dict[int, int] = {}
        """Trial id -> epochs trained (its checkpoint)."""
        self.answers: list[tuple[int, int, dict[str, Any]]] = []
        """(trial number, epoch, answer) for every boundary report."""
        self.claimed: list[tuple[int, int]] = []
        """(trial number, epochs done when claimed), in claim order."""

    def step(self, worker: Worker) -> bool:
        """One claim by `worker`, run until its member stops, completes or the epochs run out; False: no work."""
        assignment = worker.claim()
        if assignment is None:
            return False
        trial_id, number = assignment["trial_id"], assignment["number"]
        pbt = assignment["pbt"]
        assert pbt is not None and pbt["interval_epochs"] == INTERVAL
        assert assignment["hparams"] == pbt["segments"][-1]["hparams"]
        start = self.done.get(trial_id, 0)
        self.claimed.append((number, start))
        for epoch in range(start, EPOCHS):
            boundary = (epoch + 1) % INTERVAL == 0 and epoch < EPOCHS - 1
            if boundary:
                snapshot = Path(pbt["snapshot_dir"]) / f"epoch-{epoch:06d}.weights.h5"
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                snapshot.write_text(f"member {number} after epoch {epoch}")
            answer = worker.report(trial_id, epoch, val_loss=loss(number, epoch))
            assert answer.status_code == 200, answer.text
            self.done[trial_id] = epoch + 1
            if boundary:
                self.answers.append((number, epoch, answer.json()))
            action = answer.json()["action"]
            if action == "exploit":
                assert Path(answer.json()["exploit"]["snapshot"]).exists(), "a donor's snapshot is kept until copied"
            elif action == "stop":
                assert worker.release(trial_id, epochs_done=epoch + 1).status_code == 200
                return True
            elif action != "continue":
                raise AssertionError(f"unexpected answer {answer.json()}")
        assert worker.complete(trial_id, val_loss=loss(number, EPOCHS - 1)).status_code == 200
        return True

    def run_in_threads(self, sweep_id: int, client: Any) -> None:
        """Each worker in a thread of its own, claiming until the sweep has ended (a 204 while the members are
        all held by the others is asked again)."""
        def work(worker: Worker) -> None:
            while True:
                if not self.step(worker):
                    if client.get(f"{API}/sweeps/{sweep_id}").json()["status"] != "running":
                        return
                    time.sleep(0.01)

        threads = [threading.Thread(target=work, args=(worker,)) for worker in self.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)

    def run(self) -> None:
        """The workers take turns claiming until none gets work."""
        idle = 0
        while idle < len(self.workers):
            idle = 0
            for worker in self.workers:
                idle += not self.step(worker)


def test_a_population_of_four_on_two_workers_takes_turns_and_completes(client: TestClient, tmp_path: Path):
    sweep = create_sweep(client, pbt_spec())
    fleet = Fleet(client, workers=2)
    fleet.run()
    assert get_sweep(client, sweep["id"])["status"] == "completed"
    # Every member was started before any was resumed, and each resumed one was the furthest behind.
    assert [number for number, done in fleet.claimed[:POPULATION]] == [1, 2, 3, 4]
    resumed = [done for _, done in fleet.claimed[POPULATION:]]
    assert resumed == sorted(resumed)
    assert all(done == EPOCHS for done in fleet.done.values())
    stops = [(number, epoch) for number, epoch, answer in fleet.answers if answer["action"] == "stop"]
    assert stops, "members ahead hand their worker over to the ones behind"


def test_bottom_quarter_members_copy_a_top_quarter_donors_snapshot_at_that_epoch(client: TestClient):
    sweep = create_sweep(client, pbt_spec())
    fleet = Fleet(client, workers=2)
    fleet.run()
    exploits = [(number, epoch, answer["exploit"]) for number, epoch, answer in fleet.answers
                if answer["action"] == "exploit"]
    assert exploits
    trials = {trial["number"]: trial for trial in client.get(f"{API}/sweeps/{sweep['id']}/trials").json()["data"]}
    for number, epoch, exploit in exploits:
        segment = exploit["segment"]
        donor = segment["parent_number"]
        assert donor > number, "the donor is a better member (a higher number has the lower loss here)"
        assert segment["parent_epoch"] == epoch and segment["start_epoch"] == epoch + 1
        assert segment["parent_trial_id"] == trials[donor]["id"]
        assert exploit["snapshot"].endswith(f"pbt-snapshots/trial-{donor:04d}/epoch-{epoch:06d}.weights.h5")
        # Explored: the mutable hparams moved, the others are the donor's.
        donor_hparams = [s for s in trials[donor]["lineage"] if s["start_epoch"] <= epoch][-1]["hparams"]
        assert segment["hparams"]["units"] == donor_hparams["units"]
        assert segment["hparams"]["learning_rate"] != donor_hparams["learning_rate"]
    # The lineage on the API carries each exploit as a segment, and hparams are the last segment's.
    for number, trial in trials.items():
        lineage = trial["lineage"]
        assert lineage[0]["segment"] == 1 and lineage[0]["parent_number"] is None
        assert trial["hparams"] == lineage[-1]["hparams"]
        assert [exploit["segment"] for copier, _, exploit in exploits if copier == number] == lineage[1:]
    # The best member is never told to copy anyone.
    assert not [number for number, _, _ in exploits if number == POPULATION]


def test_a_repeated_boundary_report_gets_the_same_answer(client: TestClient):
    create_sweep(client, pbt_spec(population=2))
    first, second = Worker(client, "a"), Worker(client, "b")
    one, two = first.claim(), second.claim()
    for epoch in range(INTERVAL):
        assert second.report(two["trial_id"], epoch, val_loss=loss(2, epoch)).json()["action"] == "continue"
    answers = []
    for _ in range(2):
        for epoch in range(INTERVAL):
            answer = first.report(one["trial_id"], epoch, val_loss=loss(1, epoch) + 0.5 * len(answers))
        answers.append(answer.json())
    assert answers[0]["action"] == "exploit"
    assert answers[0] == answers[1]
    trial = get_trial(client, one["trial_id"])
    assert len(trial["lineage"]) == 2, "the repeat adds no segment"
    decision = trial["history"][INTERVAL - 1]["decision"]
    assert decision["action"] == "exploit" and decision["exploit"] == answers[0]["exploit"]
    assert "bottom quarter of 2 members" in decision["reason"]


def test_after_a_server_restart_the_decisions_and_lineage_are_the_same(settings: Settings,
                                                                      make_client: Callable[..., TestClient]):
    client = make_client(settings)
    sweep = create_sweep(client, pbt_spec(population=2))
    first, second = Worker(client, "a"), Worker(client, "b")
    one, two = first.claim(), second.claim()
    for epoch in range(INTERVAL):
        second.report(two["trial_id"], epoch, val_loss=loss(2, epoch))
        answer = first.report(one["trial_id"], epoch, val_loss=loss(1, epoch)).json()
    before = get_trial(client, one["trial_id"])
    restarted = make_client(settings)
    again = Worker(restarted, "a")
    again.tokens = first.tokens
    assert again.report(one["trial_id"], INTERVAL - 1, val_loss=loss(1, INTERVAL - 1)).json() == answer
    after = get_trial(restarted, one["trial_id"])
    assert after["lineage"] == before["lineage"] and after["hparams"] == before["hparams"]
    # A claim after the restart hands the member out with the same lineage.
    assert again.release(one["trial_id"], epochs_done=INTERVAL).status_code == 200
    assignment = again.claim()
    assert assignment["trial_id"] == one["trial_id"]
    assert assignment["pbt"]["segments"] == before["lineage"]
    assert get_sweep(restarted, sweep["id"])["status"] == "running"


def test_a_lost_workers_member_resumes_with_its_lineage(client_with: Callable[..., TestClient]):
    client = client_with(lease_seconds=0.5, reap_interval_seconds=3600)
    create_sweep(client, pbt_spec(population=2))
    first, second = Worker(client, "a"), Worker(client, "b")
    one, two = first.claim(), second.claim()
    for epoch in range(INTERVAL):
        second.report(two["trial_id"], epoch, val_loss=loss(2, epoch))
        first.report(one["trial_id"], epoch, val_loss=loss(1, epoch))
    lineage = get_trial(client, one["trial_id"])["lineage"]
    assert len(lineage) == 2
    time.sleep(0.6)  # worker "a" is gone: its lease runs out; worker "b" renews its own
    assert second.heartbeat(two["trial_id"]).status_code == 200
    assignment = Worker(client, "c").claim()
    assert assignment is not None and assignment["trial_id"] == one["trial_id"]
    assert assignment["attempt"] == 2
    assert assignment["pbt"]["segments"] == lineage
    assert assignment["hparams"] == lineage[-1]["hparams"]


def test_snapshots_are_kept_while_a_member_may_copy_them_and_deleted_after(client: TestClient, settings: Settings):
    sweep = create_sweep(client, pbt_spec(population=2))
    root = Path(settings.logdir).resolve() / str(sweep["id"]) / "pbt-snapshots"
    first, second = Worker(client, "a"), Worker(client, "b")
    one, two = first.claim(), second.claim()

    def train(worker: Worker, trial: dict[str, Any], number: int, epochs: range) -> list[str]:
        actions = []
        for epoch in epochs:
            if (epoch + 1) % INTERVAL == 0 and epoch < EPOCHS - 1:
                folder = Path(trial["pbt"]["snapshot_dir"])
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"epoch-{epoch:06d}.weights.h5").write_text("weights")
            actions.append(worker.report(trial["trial_id"], epoch, val_loss=loss(number, epoch)).json()["action"])
        return actions

    train(second, two, 2, range(0, INTERVAL))
    assert (root / "trial-0002" / "epoch-000001.weights.h5").exists(), "member 1 has not been judged at epoch 1"
    assert train(first, one, 1, range(0, INTERVAL))[-1] == "exploit"
    assert (root / "trial-0002" / "epoch-000001.weights.h5").exists(), "member 1 has not loaded it yet"
    train(first, one, 1, range(INTERVAL, INTERVAL + 1))
    assert not (root / "trial-0002" / "epoch-000001.weights.h5").exists()
    assert not (root / "trial-0001" / "epoch-000001.weights.h5").exists()
    train(second, two, 2, range(INTERVAL, 2 * INTERVAL))
    assert (root / "trial-0002" / "epoch-000003.weights.h5").exists()
    assert second.complete(two["trial_id"], val_loss=1.0).status_code == 200  # member 2 ends early
    assert (root / "trial-0002" / "epoch-000003.weights.h5").exists(), "member 1 may still copy it"
    train(first, one, 1, range(INTERVAL + 1, EPOCHS))
    assert first.complete(one["trial_id"], val_loss=1.0).status_code == 200
    assert get_sweep(client, sweep["id"])["status"] == "completed"
    assert not root.exists(), "all of a sweep's snapshots go when it ends"


def test_a_cancelled_sweeps_snapshots_are_deleted(client: TestClient, settings: Settings):
    sweep = create_sweep(client, pbt_spec(population=2))
    trial = Worker(client, "a").claim()
    folder = Path(trial["pbt"]["snapshot_dir"])
    folder.mkdir(parents=True)
    (folder / "epoch-000001.weights.h5").write_text("weights")
    assert client.post(f"{API}/sweeps/{sweep['id']}/cancel").status_code == 200
    assert not folder.parent.exists()


def test_a_member_claimed_over_real_http_carries_its_pbt_settings(start_server: Callable[..., Any], tmp_path: Path):
    server = start_server()
    with httpx.Client(base_url=server.url + API) as http:
        assert http.post("/sweeps", json=pbt_spec()).status_code == 201
        assignment = http.post("/trials/claim", json={"worker_id": "w", "host": "h"}).json()
    assert assignment["pbt"]["snapshot_dir"] == str(tmp_path / "runs" / "1" / "pbt-snapshots" / "trial-0001")
    assert assignment["pbt"]["segments"][0]["hparams"] == assignment["hparams"]
    assert math.isfinite(assignment["hparams"]["learning_rate"])


def test_a_failed_sweeps_snapshots_are_deleted(client: TestClient):
    sweep = create_sweep(client, {**pbt_spec(population=2), "max_failures": 1})
    worker = Worker(client, "a")
    trial = worker.claim()
    folder = Path(trial["pbt"]["snapshot_dir"])
    folder.mkdir(parents=True)
    (folder / "epoch-000001.weights.h5").write_text("weights")
    assert worker.fail(trial["trial_id"], error="boom").status_code == 200
    assert get_sweep(client, sweep["id"])["status"] == "failed"
    assert not folder.parent.exists()


def test_a_sweep_of_another_strategy_has_no_pbt_member_and_no_lineage(client: TestClient):
    create_sweep(client, {**pbt_spec(), "search": {"strategy": "random", "max_trials": 2}})
    assignment = Worker(client, "a").claim()
    assert assignment["pbt"] is None
    assert get_trial(client, assignment["trial_id"])["lineage"] is None


def test_a_population_of_four_on_two_worker_threads_over_real_http_completes(start_server: Callable[..., Any]):
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        sweep = http.post(f"{API}/sweeps", json=pbt_spec()).json()
        fleet = Fleet(http, workers=2)  # type: ignore[arg-type]  # Worker needs only .post
        fleet.run_in_threads(sweep["id"], http)
        assert http.get(f"{API}/sweeps/{sweep['id']}").json()["status"] == "completed"
        trials = http.get(f"{API}/sweeps/{sweep['id']}/trials").json()["data"]
    assert sorted(fleet.done.values()) == [EPOCHS] * POPULATION
    assert all(len(trial["lineage"]) >= 1 and trial["state"] == "completed" for trial in trials)
    assert any(answer["action"] == "stop" for _, _, answer in fleet.answers)


def test_a_pbt_sweep_cannot_be_extended(client: TestClient):
    sweep = create_sweep(client, pbt_spec(population=2))
    answer = client.post(f"{API}/sweeps/{sweep['id']}/extend", json={"max_trials": 4})
    assert answer.status_code == 422
    assert "cannot be extended" in answer.text and "max_trials" in answer.text


def test_in_a_paused_sweep_a_member_ahead_goes_on_rather_than_hand_over(client: TestClient):
    sweep = create_sweep(client, pbt_spec(population=3))
    worker = Worker(client, "a")
    trial = worker.claim()
    assert client.post(f"{API}/sweeps/{sweep['id']}/pause").status_code == 200
    for epoch in range(INTERVAL):
        answer = worker.report(trial["trial_id"], epoch, val_loss=loss(1, epoch)).json()
    assert answer["action"] == "continue", "members 2 and 3 wait, but a paused sweep hands out none of them"
    assert client.post(f"{API}/sweeps/{sweep['id']}/resume").status_code == 200
    for epoch in range(INTERVAL, 2 * INTERVAL):
        answer = worker.report(trial["trial_id"], epoch, val_loss=loss(1, epoch)).json()
    assert answer["action"] == "stop", "running again: it hands its worker to a member not started yet"
