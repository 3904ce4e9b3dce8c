"""The hand-off between the supervisor and its agents: the state file and the checkpoint-deletion rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.handoff import RunningTrial, StateFile, delete_checkpoint_if_finished, ended_for_good

TRIAL = RunningTrial(trial_id=3, trial_name="sweep 1 trial 2 (id 3)", worker_id="box-cpu0", lease_token=7,
                     checkpoint_dir="/runs/1/trial-0002/checkpoint")


def test_the_state_file_reads_back_the_running_trial_it_recorded(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "box-cpu0.json")

    state.write(TRIAL)

    assert state.read() == TRIAL
    assert [path.name for path in tmp_path.iterdir()] == ["box-cpu0.json"]  # no partial file left behind
    state.clear()
    assert state.read() is None
    state.clear()  # clearing twice is fine: the child and its supervisor may both do it


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"trial_id": "three"}', b'{"trial_id": 3}',
                                     b'{"trial_id": 3, "worker_id": "w", "lease_token": 0, "checkpoint_dir": ""}'])
def test_a_state_file_that_is_not_a_running_trial_reads_as_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "box-cpu0.json"
    path.write_bytes(content)

    assert StateFile(path).read() is None


def test_the_supervisor_names_the_trial_as_its_child_did_and_by_id_for_an_older_childs_file(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "box-cpu0.json")
    state.write(TRIAL)
    assert state.read().name == "sweep 1 trial 2 (id 3)"  # type: ignore[union-attr]

    (tmp_path / "box-cpu0.json").write_text('{"trial_id": 3, "worker_id": "box-cpu0", "lease_token": 7, '
                                            '"checkpoint_dir": "/runs/1/3/checkpoint"}')
    assert state.read().name == "trial 3"  # type: ignore[union-attr]


def test_a_missing_state_file_reads_as_none(tmp_path: Path) -> None:
    assert StateFile(tmp_path / "never-written.json").read() is None


@pytest.mark.parametrize(("state", "finished"), [
    ("completed", True), ("failed", True), ("pruned", True), ("cancelled", True),
    ("pending", False), ("running", False), ("no-such-state", False), (None, False)])
def test_only_a_trial_finished_for_good_has_its_checkpoint_deleted(tmp_path: Path, state: str | None,
                                                                   finished: bool) -> None:
    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "lease-7").mkdir(parents=True)
    answer = {"id": 3, "state": state}

    assert ended_for_good(answer) is finished
    assert delete_checkpoint_if_finished(answer, str(checkpoint)) is finished
    assert checkpoint.exists() is not finished


def test_no_answer_deletes_nothing(tmp_path: Path) -> None:
    assert delete_checkpoint_if_finished(None, str(tmp_path)) is False
    assert delete_checkpoint_if_finished({"state": "completed"}, None) is False
    assert tmp_path.exists()
