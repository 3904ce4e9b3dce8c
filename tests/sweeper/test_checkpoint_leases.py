"""Each lease of a trial saves its checkpoint into a folder of its own, so two processes that both train
the trial (one of them no longer its holder) never delete or overwrite each other's files, and a new
lease resumes from the newest state of its own or an earlier lease.

The first tests train the real (tiny) digits trial of test_runner; the last ones check the file rules
with a stand-in model that writes a few bytes, with no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sweeper.training.checkpoints import STATE_FILE, CheckpointError, TrialCheckpoint, lease_folder_name
from sweeper.training.runner import run_trial
from test_resume import _InterruptAt, _ProcessDied
from test_runner import _assignment, _Recorder

EPOCHS = 4


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _lease(logdir: Path, token: int) -> Any:
    """Trial 7's assignment for its claim with lease token `token`."""
    return _assignment(logdir, epochs=EPOCHS, lease_token=token).model_copy(update={"attempt": token})


@pytest.mark.training
def test_two_leases_saving_into_one_checkpoint_never_touch_each_others_files_and_the_newest_lease_resumes(
        tmp_path: Path) -> None:
    root = tmp_path / "7" / "checkpoint"
    run_trial(_lease(tmp_path, 1), _InterruptAt(0, "stop"))
    first = _files(root / lease_folder_name(1))
    assert sorted(first) == ["epochs-000001.weights.h5", STATE_FILE]

    # Lease 2 resumes what lease 1 saved, and saves its own next epoch beside it.
    second_run = run_trial(_lease(tmp_path, 2), _InterruptAt(1, "stop"))
    assert (second_run.resumed_from, second_run.epochs_run) == (1, 2)
    assert _files(root / lease_folder_name(1)) == first
    second = _files(root / lease_folder_name(2))
    assert sorted(second) == ["epochs-000002.weights.h5", STATE_FILE]

    # Lease 1's process never learnt that it lost the trial, and trains on: two more saves, each
    # replacing its own previous weights, and lease 2's files stay as they were.
    stale_run = run_trial(_lease(tmp_path, 1), _InterruptAt(2, "stop"))
    assert (stale_run.resumed_from, stale_run.epochs_run) == (1, 3)
    assert sorted(_files(root / lease_folder_name(1))) == ["epochs-000003.weights.h5", STATE_FILE]
    assert _files(root / lease_folder_name(2)) == second

    # The next lease resumes from the newest lease's state, not from the stale one's further epoch.
    recorder = _Recorder()
    result = run_trial(_lease(tmp_path, 3), recorder)
    assert result.resumed_from == 2
    assert [epoch for epoch, _ in recorder.calls] == [2, 3]


@pytest.mark.training
def test_a_lease_that_saved_nothing_gives_way_to_the_lease_before_it(tmp_path: Path) -> None:
    root = tmp_path / "7" / "checkpoint"
    run_trial(_lease(tmp_path, 1), _InterruptAt(1, "stop"))
    # Lease 2's process dies at its first report, before its first save.
    with pytest.raises(_ProcessDied):
        run_trial(_lease(tmp_path, 2), _InterruptAt(2, "died"))
    assert not (root / lease_folder_name(2)).exists()
    # Lease 3's died between making its folder and saving into it.
    (root / lease_folder_name(3)).mkdir()

    result = run_trial(_lease(tmp_path, 4), _Recorder())

    assert (result.resumed_from, result.epochs_run) == (2, EPOCHS)


@pytest.mark.training
def test_an_unreadable_state_is_left_in_place_and_the_lease_before_it_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "7" / "checkpoint"
    run_trial(_lease(tmp_path, 1), _InterruptAt(0, "stop"))
    run_trial(_lease(tmp_path, 2), _InterruptAt(1, "stop"))
    broken = root / lease_folder_name(2) / STATE_FILE
    broken.write_text('{"format": 1, "epochs_done": 2')

    result = run_trial(_lease(tmp_path, 3), _Recorder())

    assert result.resumed_from == 1
    assert broken.read_text() == '{"format": 1, "epochs_done": 2'
    assert f"{broken.parent}: {STATE_FILE} is not a checkpoint state" in caplog.text


@pytest.mark.training
def test_a_save_deletes_only_the_weights_its_own_previous_state_named(tmp_path: Path) -> None:
    folder = tmp_path / "7" / "checkpoint" / lease_folder_name(1)
    folder.mkdir(parents=True)
    # Files this lease's saves did not write: another writer's save in flight, and weights nobody names.
    foreign = {"partial-0123456789abcdef.weights.h5": b"in flight", "epochs-000009.weights.h5": b"unnamed"}
    for name, data in foreign.items():
        (folder / name).write_bytes(data)
    (folder.parent / "stray.weights.h5").write_bytes(b"beside the leases")

    run_trial(_lease(tmp_path, 1), _InterruptAt(2, "stop"))  # saves after epochs 0, 1 and 2

    files = _files(folder)
    assert sorted(files) == sorted([*foreign, "epochs-000003.weights.h5", STATE_FILE])
    assert {name: files[name] for name in foreign} == foreign
    assert (folder.parent / "stray.weights.h5").read_bytes() == b"beside the leases"


# -- the file rules, with a stand-in model ---------------------------------------------------------

class _Model:
    """Writes and reads its "weights" as bytes, as a Keras model's save_weights and load_weights would."""

    optimizer = None
    trainable_variables: list[Any] = []

    def __init__(self, weights: bytes = b"weights", fits: bool = True):
        self.weights, self.fits = weights, fits
        self.loaded: bytes | None = None

    def save_weights(self, filepath: str) -> None:
        Path(filepath).write_bytes(self.weights)

    def load_weights(self, filepath: str) -> None:
        data = Path(filepath).read_bytes()
        if not self.fits:
            raise ValueError("Layer 'dense' expected 2 variables, but received 0 variables during loading")
        self.loaded = data


def _history(epochs: int) -> list[dict[str, float]]:
    return [{"loss": 1.0 / (epoch + 1)} for epoch in range(epochs)]


def test_a_lease_never_resumes_from_a_later_leases_state(tmp_path: Path) -> None:
    TrialCheckpoint(tmp_path, 1).save(_Model(b"lease 1"), _history(1))
    TrialCheckpoint(tmp_path, 3).save(_Model(b"lease 3"), _history(3))

    stale = TrialCheckpoint(tmp_path, 2).load()
    newest = TrialCheckpoint(tmp_path, 4).load()

    assert stale is not None and (stale.lease_token, stale.epochs_done) == (1, 1)
    assert newest is not None and (newest.lease_token, newest.epochs_done) == (3, 3)
    assert newest.history == _history(3)
    assert TrialCheckpoint(tmp_path).load() == newest  # without a lease: the newest of all


def test_weights_that_do_not_fit_are_set_aside_by_the_lease_that_found_them(tmp_path: Path) -> None:
    TrialCheckpoint(tmp_path, 1).save(_Model(), _history(2))
    saved = _files(tmp_path / lease_folder_name(1))
    checkpoint = TrialCheckpoint(tmp_path, 2)
    resume = checkpoint.load()
    assert resume is not None

    with pytest.raises(CheckpointError, match=r"cannot restore the weights saved after epoch 1 .*: ValueError: "
                                              r"Layer 'dense' expected .*; they are set aside, so the trial starts over"):
        checkpoint.restore(_Model(fits=False), resume)

    assert _files(tmp_path / lease_folder_name(1)) == saved
    assert TrialCheckpoint(tmp_path, 3).load() is None
    # A later save of the lease that set them aside is resumed from again.
    checkpoint.save(_Model(b"again"), _history(1))
    again = TrialCheckpoint(tmp_path, 3).load()
    assert again is not None and (again.lease_token, again.epochs_done) == (2, 1)


def test_weights_that_vanished_while_restoring_are_not_set_aside(tmp_path: Path) -> None:
    TrialCheckpoint(tmp_path, 1).save(_Model(), _history(2))
    checkpoint = TrialCheckpoint(tmp_path, 2)
    resume = checkpoint.load()
    assert resume is not None
    Path(resume.weights).unlink()  # as lease 1's process, still saving, replaced them meanwhile
    TrialCheckpoint(tmp_path, 1).save(_Model(), _history(3))

    with pytest.raises(CheckpointError, match="vanished while being restored; the trial resumes on its next attempt"):
        checkpoint.restore(_Model(), resume)

    later = TrialCheckpoint(tmp_path, 3).load()
    assert later is not None and later.epochs_done == 3


def test_saving_needs_the_lease_token_and_deleting_does_not(tmp_path: Path) -> None:
    TrialCheckpoint(tmp_path / "checkpoint", 1).save(_Model(), _history(1))
    TrialCheckpoint(tmp_path / "checkpoint", 2).save(_Model(), _history(2))

    with pytest.raises(ValueError, match="opened without a lease token, so it cannot be saved to"):
        TrialCheckpoint(tmp_path / "checkpoint").save(_Model(), _history(3))
    TrialCheckpoint(tmp_path / "checkpoint").delete()

    assert not (tmp_path / "checkpoint").exists()
    TrialCheckpoint(tmp_path / "checkpoint").delete()  # nothing left: nothing to do


@pytest.mark.parametrize("token", [0, -1, True, 1.0])
def test_a_lease_token_is_a_whole_number_from_one(tmp_path: Path, token: Any) -> None:
    with pytest.raises(ValueError, match=rf"a lease token must be an int >= 1, but got {token!r}"):
        TrialCheckpoint(tmp_path, token)
