"""A trial whose logdir is in a GCS bucket: its logs, its checkpoint and a resume all go through the bucket.

The bucket is a GCS emulator reached by TensorFlow's own gs:// file system (see gcs_emulator), so the
runner, Keras's TensorBoard callback, the summary writers, the checkpoint and the rewind of a resumed
trial's logs use exactly the code paths they would use on a real bucket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf
from gcs_emulator import gcs, unique_prefix  # noqa: F401 - the fixture
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import api_pb2, metadata

from sweeper import parse_spec
from sweeper.hparams_log import write_experiment
from sweeper.log_location import MIN_RUN_DIGITS, checkpoint_dir, join, run_name, sweep_dir, trial_dir
from sweeper.messages import Assignment
from sweeper.training.checkpoints import STATE_FILE, TrialCheckpoint, lease_folder_name
from sweeper.training.runner import run_trial
from test_resume import _InterruptAt
from test_runner import _assignment, _Recorder, _scalars, _session, _session_groups

pytestmark = pytest.mark.training

EPOCHS = 3


def _trial_in(logdir: str) -> Assignment:
    """The runner tests' trial, with its folders in `logdir` as the server would name them."""
    base = _assignment(Path("replaced"), epochs=EPOCHS, lr_schedule="exponential")
    folder = trial_dir(logdir, base.sweep_id, run_name(base.number, MIN_RUN_DIGITS))
    return base.model_copy(update={"logdir": folder, "checkpoint_dir": checkpoint_dir(folder)})


def _session_starts(folder: str) -> int:
    return sum(value.tag == metadata.SESSION_START_INFO_TAG
               for path in tf.io.gfile.glob(join(folder, "*tfevents*")) for event in EventFileLoader(path).Load()
               for value in event.summary.value)


def test_a_trial_logged_to_a_bucket_resumes_from_its_checkpoint_there_and_logs_each_epoch_once(gcs) -> None:
    logdir = gcs.url(unique_prefix(), "runs")
    assignment = _trial_in(logdir)
    assert assignment.logdir.startswith("gs://")
    spec = {"name": "s", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": dict(assignment.hparams)}
    write_experiment(sweep_dir(logdir, assignment.sweep_id), parse_spec(spec))

    # The first attempt is stopped after epoch 1: its checkpoint stays in the bucket, in its lease's folder.
    assert run_trial(assignment, _InterruptAt(1, "stop")).stopped_by == "stop"
    first_state = join(assignment.checkpoint_dir, lease_folder_name(1), STATE_FILE)
    assert tf.io.gfile.exists(first_state)
    # The second save replaced the first's weights, as the first's state named them.
    assert sorted(tf.io.gfile.listdir(join(assignment.checkpoint_dir, lease_folder_name(1)))) == \
        ["epochs-000002.weights.h5", STATE_FILE]
    assert TrialCheckpoint(assignment.checkpoint_dir).load().epochs_done == 2  # type: ignore[union-attr]

    second = _Recorder()
    result = run_trial(assignment.model_copy(update={"attempt": 2, "lease_token": 2}), second)

    assert [epoch for epoch, _ in second.calls] == [2]
    assert (result.epochs_run, result.resumed_from, result.stopped_by) == (EPOCHS, 2, None)
    for run in ("train", "validation"):
        assert [step for step, _ in _scalars(join(assignment.logdir, run))["epoch_loss"]] == list(range(EPOCHS))
    assert _session_starts(assignment.logdir) == 1
    assert _session(assignment.logdir)[1] == api_pb2.STATUS_SUCCESS
    (group,) = _session_groups(sweep_dir(logdir, assignment.sweep_id))
    assert group.name == "trial-0007"
    assert [session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]
    # The runner leaves the checkpoint; the worker deletes it, every lease's, once the server has the end.
    assert tf.io.gfile.exists(first_state)
    TrialCheckpoint(assignment.checkpoint_dir).delete()
    assert not tf.io.gfile.exists(first_state)
    assert TrialCheckpoint(assignment.checkpoint_dir).load() is None


def test_a_pbt_member_in_a_bucket_saves_its_snapshot_there_once_and_exploits_a_donors_from_there(gcs) -> None:
    from test_population import DONOR_HPARAMS, EXPLOIT_EPOCH, EXPLORED, MEMBER_HPARAMS, _exploit, _member, \
        _segment, _Server

    from sweeper.messages import snapshot_path
    from sweeper.training import population

    logdir = gcs.url(unique_prefix(), "runs")
    snapshots = join(logdir, "1", "pbt-snapshots")

    def in_bucket(member: Assignment) -> Assignment:
        run = Path(member.logdir).name
        folder = join(logdir, "1", run)
        return member.model_copy(update={"logdir": folder, "checkpoint_dir": checkpoint_dir(folder), "pbt": (
            member.pbt.model_copy(update={"snapshot_dir": join(snapshots, run)}))})

    run_trial(in_bucket(_member(Path("replaced"), 3, [_segment(DONOR_HPARAMS)])), _Server())
    donor_snapshot = snapshot_path(join(snapshots, "trial-0003"), EXPLOIT_EPOCH)
    assert tf.io.gfile.listdir(join(snapshots, "trial-0003")) == ["epoch-000001.weights.h5"]
    assert population.snapshot_hparams(donor_snapshot) == DONOR_HPARAMS
    first = tf.io.gfile.GFile(donor_snapshot, "rb").read()

    member = in_bucket(_member(Path("replaced"), 7, [_segment(MEMBER_HPARAMS)]))
    server = _Server(_exploit(donor_snapshot))
    result = run_trial(member, server)

    assert (result.epochs_run, result.stopped_by) == (4, None)
    assert [metrics["learning_rate"] for _, metrics in server.calls] == pytest.approx([0.001, 0.001, 0.05, 0.05])
    assert sorted(group.name for group in _session_groups(join(logdir, "1"))) == \
        ["trial-0003/segment-01", "trial-0007/segment-01", "trial-0007/segment-02"]
    # Saving it again (a member training the epoch a second time) leaves the first file.
    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert population.save_snapshot(model, donor_snapshot, EXPLORED) is False
    assert tf.io.gfile.GFile(donor_snapshot, "rb").read() == first
    assert tf.io.gfile.listdir(join(snapshots, "trial-0003")) == ["epoch-000001.weights.h5"]
