"""The agent carries a Population Based Training exploit from the server's answer into the Keras runner.

A real server runs a two-trial digits sweep; its claims and metrics answers are wrapped the way a PBT
server's would be (each trial a member with a snapshot folder; member 2 told after its epoch 1 to exploit
member 1's snapshot of that epoch), and the agent trains both with the real runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from sweeper.client import Client
from sweeper.messages import (Action, Assignment, ClaimRequest, Directive, Exploit, MetricsReport, PbtMember,
                              PbtSegment, snapshot_path)
from sweeper.training.checkpoints import TrialCheckpoint, checkpoint_folder
from sweeper.training.runner import run_trial
from workers.agent import Agent
from workers.lease import TrialControl
from workers_testing import digits_spec

pytestmark = pytest.mark.training
EPOCHS, INTERVAL, EXPLOIT_EPOCH = 4, 2, 1
NEW_LEARNING_RATE = 0.05


class _PbtServer:
    """Wraps a client's claim and metrics calls as a PBT server would answer them: members with snapshot
    folders under `<sweep folder>/pbt-snapshots/`, and member 2 told to exploit member 1 after epoch 1."""

    def __init__(self, client: Client, on_exploit: Any = None):
        self.client, self.on_exploit = client, on_exploit
        self.members: dict[int, Assignment] = {}
        self.exploit: Exploit | None = None
        self._claim, self._report = client.claim, client.report_metrics
        client.claim = self.claim  # type: ignore[method-assign]
        client.report_metrics = self.report_metrics  # type: ignore[method-assign]

    def claim(self, request: ClaimRequest) -> Assignment | None:
        assignment = self._claim(request)
        if assignment is None:
            return None
        snapshots = str(Path(assignment.logdir).parent / "pbt-snapshots" / Path(assignment.logdir).name)
        member = assignment.model_copy(update={"pbt": PbtMember(
            interval_epochs=INTERVAL, snapshot_dir=snapshots,
            segments=[PbtSegment(segment=1, start_epoch=0, hparams=assignment.hparams)])})
        self.members[member.number] = member
        return member

    def report_metrics(self, trial_id: int, report: MetricsReport) -> Directive:
        answer = self._report(trial_id, report)
        member = next(member for member in self.members.values() if member.trial_id == trial_id)
        if member.number != 2 or report.epoch != EXPLOIT_EPOCH:
            return answer
        donor = self.members[1]
        self.exploit = Exploit(snapshot=snapshot_path(donor.pbt.snapshot_dir, EXPLOIT_EPOCH), segment=PbtSegment(
            segment=2, start_epoch=EXPLOIT_EPOCH + 1,
            hparams={**donor.hparams, "learning_rate": NEW_LEARNING_RATE},
            parent_trial_id=donor.trial_id, parent_number=1, parent_epoch=EXPLOIT_EPOCH))
        if self.on_exploit is not None:
            self.on_exploit()
        return Directive(action=Action.exploit, exploit=self.exploit)


def _layer_arrays(weights_file: str) -> dict[str, np.ndarray]:
    """The model's weights in a `.weights.h5` file, by their place in it (not the optimizer's state)."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(weights_file, "r") as file:
        file["layers"].visititems(lambda name, item: arrays.__setitem__(name, item[()])
                                  if isinstance(item, h5py.Dataset) else None)
    return arrays


def _history(client: Client, trial_id: int) -> list[dict[str, float]]:
    return [point["metrics"] for point in client.get_trial(trial_id)["history"]]


def test_the_agent_carries_an_exploit_from_the_servers_answer_into_the_runner(client: Client) -> None:
    sweep = client.create_sweep(digits_spec(trials=2, epochs=EPOCHS))
    server = _PbtServer(client)
    agent = Agent(client, "test-cpu0", "test-host", poll_interval=0.1, heartbeat_interval=1.0, idle_exit=0.5,
                  run_trial=run_trial)

    agent.run()

    donor, member = server.members[1], server.members[2]
    trials = {trial["number"]: trial for trial in client.list_trials(sweep["id"])["data"]}
    assert [trials[number]["state"] for number in (1, 2)] == ["completed", "completed"]
    history = _history(client, member.trial_id)
    default_rate = history[0]["learning_rate"]
    assert [metrics["learning_rate"] for metrics in history] == \
        pytest.approx([default_rate, default_rate, NEW_LEARNING_RATE, NEW_LEARNING_RATE])
    # The donor's model (8 units, where the member had 16) is what the member trains from the exploit on.
    donor_params = _history(client, donor.trial_id)[0]["num_params"]
    assert [metrics["num_params"] for metrics in history] == [history[0]["num_params"]] * 2 + [donor_params] * 2
    assert donor_params < history[0]["num_params"]
    segments = sorted(path.name for path in Path(member.logdir).iterdir() if path.name.startswith("segment-"))
    assert segments == ["segment-01", "segment-02"]


def test_a_worker_shutting_down_when_told_to_exploit_carries_it_out_then_hands_the_member_back(
        client: Client) -> None:
    client.create_sweep(digits_spec(trials=2, epochs=EPOCHS))
    agent = Agent(client, "test-cpu0", "test-host", poll_interval=0.1, heartbeat_interval=1.0, idle_exit=0.5,
                  run_trial=run_trial)
    server = _PbtServer(client, on_exploit=agent.shutdown)
    released: list[Any] = []
    real_release = client.release

    def release(trial_id: int, report: Any) -> Any:
        released.append(report)
        return real_release(trial_id, report)

    client.release = release  # type: ignore[method-assign]

    agent.run()

    member = server.members[2]
    assert [report.epochs_done for report in released] == [EXPLOIT_EPOCH + 1]
    assert client.get_trial(member.trial_id)["state"] == "pending"
    # The checkpoint a retry resumes the new segment from holds the donor's weights, not the member's own.
    resume = TrialCheckpoint(checkpoint_folder(member)).load()
    assert resume is not None and resume.epochs_done == EXPLOIT_EPOCH + 1
    donor_weights = _layer_arrays(server.exploit.snapshot)
    saved = _layer_arrays(resume.weights)
    assert saved.keys() == donor_weights.keys()
    assert all(np.array_equal(saved[name], donor_weights[name]) for name in saved)


def test_an_exploit_answer_is_passed_on_once_and_never_kept_as_the_trials_standing_action() -> None:
    control = TrialControl(trial_id=1)
    exploit = Exploit(snapshot="s/epoch-000001.weights.h5", segment=PbtSegment(segment=2, start_epoch=2, hparams={}))
    reply = Directive(action=Action.exploit, exploit=exploit)

    control.server_says(reply.action)

    assert control.answer(reply, leaving=False) == reply
    assert control.answer(Directive(), leaving=False) == Directive()
    assert control.interrupt(orphaned=False) is None
    # Leaving: the exploit is still carried out, and the next question after it is answered stop.
    assert control.answer(reply, leaving=True) == reply
    assert control.interrupt(orphaned=False) is Action.stop
    # A cancelled sweep's member is not worth an exploit.
    control.server_says(Action.cancel)
    assert control.answer(reply, leaving=False) == Directive(action=Action.cancel)
