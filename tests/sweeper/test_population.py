"""Population Based Training members in the real (tiny) Keras runner: snapshots, exploits, retries and the
TensorBoard view, driven by a scripted `on_epoch_end` that answers as the server would.

A donor (member 3) is trained first and leaves its snapshot of epoch 1; member 7, with other hparams, is
told after its epoch 1 to exploit that snapshot with a new learning rate and dropout.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from tensorboard.plugins.hparams import api_pb2

from sweeper import InfrastructureError
from sweeper._spec import Objective, TrainSettings
from sweeper.messages import Action, Assignment, Directive, Exploit, PbtMember, PbtSegment, snapshot_path
from sweeper.training import population
from sweeper.training.checkpoints import TrialCheckpoint
from sweeper.training.population import SnapshotError
from sweeper.training.runner import run_trial
from test_runner import _scalars, _session, _session_groups

pytestmark = pytest.mark.training
EPOCHS = 4
INTERVAL = 2
EXPLOIT_EPOCH = 1  # the first boundary: epochs 0 and 1, then 2 and 3
MEMBER, DONOR = 7, 3
DONOR_HPARAMS = {"units": 16, "learning_rate": 0.01, "batch_size": 256, "seed": 1}
MEMBER_HPARAMS = {"units": 16, "learning_rate": 0.001, "batch_size": 256, "seed": 2}
# The donor's hparams with the mutable ones explored: a higher rate, and dropout where there was none.
EXPLORED = {**DONOR_HPARAMS, "learning_rate": 0.05, "dropout": 0.25}


class _ProcessDied(BaseException):
    """A stand-in for the worker process dying: no `except Exception` in the runner sees it."""


def _segment(hparams: dict[str, Any]) -> PbtSegment:
    return PbtSegment(segment=1, start_epoch=0, hparams=hparams)


def _member(sweep_dir: Path, number: int, segments: list[PbtSegment], lease_token: int = 1) -> Assignment:
    run = f"trial-{number:04d}"
    return Assignment(
        trial_id=100 + number, sweep_id=1, number=number, hparams=segments[-1].hparams, model="mlp",
        dataset="digits", objective=Objective(metric="val_accuracy"),
        train=TrainSettings(epochs=EPOCHS, validation_split=0.2), logdir=str(sweep_dir / run),
        lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5), lease_token=lease_token,
        attempt=lease_token, log_scaled=["learning_rate"],
        pbt=PbtMember(interval_epochs=INTERVAL, snapshot_dir=str(sweep_dir / "pbt-snapshots" / run),
                      segments=segments))


def _exploit(snapshot: str, hparams: dict[str, Any] = EXPLORED) -> Exploit:
    return Exploit(snapshot=snapshot, segment=PbtSegment(
        segment=2, start_epoch=EXPLOIT_EPOCH + 1, hparams=hparams, parent_trial_id=100 + DONOR,
        parent_number=DONOR, parent_epoch=EXPLOIT_EPOCH))


class _Server:
    """An `on_epoch_end` that answers continue, except exploit (the same stored one, however often asked)
    after EXPLOIT_EPOCH; it records each call, and `die_at` makes the process 'die' reporting that epoch."""

    def __init__(self, exploit: Exploit | None = None, die_at: int | None = None):
        self.exploit, self.die_at = exploit, die_at
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, epoch: int, metrics: dict[str, float]) -> Directive:
        if epoch == self.die_at:
            raise _ProcessDied()
        self.calls.append((epoch, metrics))
        if epoch == EXPLOIT_EPOCH and self.exploit is not None:
            return Directive(action=Action.exploit, exploit=self.exploit)
        return Directive()


class _ModelWatch(keras.callbacks.Callback):
    """Notes, at the start of each epoch, the model's weights, its optimizer's variables and its dropout rates."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[int, list[np.ndarray]] = {}
        self.optimizer: dict[int, dict[str, np.ndarray]] = {}
        self.dropout: dict[int, list[float]] = {}

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.weights[epoch] = [weight for weight in self.model.get_weights()]
        self.optimizer[epoch] = {variable.path.split("/", 1)[1]: keras.ops.convert_to_numpy(variable)
                                 for variable in self.model.optimizer.variables}
        self.dropout[epoch] = [layer.rate for layer in self.model.layers if isinstance(layer, keras.layers.Dropout)]


def _saved_state(weights_file: str, hparams: dict[str, Any]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The weights and optimizer variables in a `.weights.h5` file, loaded into a model of `hparams`."""
    from sweeper.training.datasets import DatasetInfo
    from sweeper.training.models import build_mlp
    from sweeper.training.schedules import build_optimizer

    model = build_mlp(hparams, DatasetInfo(input_shape=(64,), num_classes=10))
    model.compile(optimizer=build_optimizer(hparams, float(hparams["learning_rate"])),
                  loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(weights_file)
    return ([weight for weight in model.get_weights()],
            {variable.path.split("/", 1)[1]: keras.ops.convert_to_numpy(variable) for variable in model.optimizer.variables})


def _same(first: list[np.ndarray], second: list[np.ndarray]) -> bool:
    return len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))


def _moments(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Adam's per-weight state: all but the step count and the learning rate.
    return {name: value for name, value in variables.items() if name not in ("iteration", "learning_rate")}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder in which the donor, member 3, has trained all its epochs and left its snapshot of epoch 1."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    run_trial(_member(sweep_dir, DONOR, [_segment(DONOR_HPARAMS)]), _Server())
    return sweep_dir


def _donor_snapshot(sweep_dir: Path) -> str:
    return snapshot_path(str(sweep_dir / "pbt-snapshots" / "trial-0003"), EXPLOIT_EPOCH)


@pytest.fixture(scope="module")
def exploited(sweep: Path) -> tuple[Assignment, Any, _Server, _ModelWatch]:
    """Member 7 trained all its epochs, exploiting the donor's snapshot after epoch 1."""
    member = _member(sweep, MEMBER, [_segment(MEMBER_HPARAMS)])
    server, watch = _Server(_exploit(_donor_snapshot(sweep))), _ModelWatch()
    result = run_trial(member, server, callbacks=[watch])
    return member, result, server, watch


def test_a_member_saves_a_snapshot_at_each_boundary_before_its_last_epoch(sweep: Path) -> None:
    snapshots = sorted(path.name for path in (sweep / "pbt-snapshots" / "trial-0003").iterdir())

    # Epoch 3 is an interval's end too, but the member's last: no one can copy it.
    assert snapshots == ["epoch-000001.weights.h5"]
    assert population.snapshot_hparams(_donor_snapshot(sweep)) == DONOR_HPARAMS


def test_after_an_exploit_the_member_trains_on_from_the_donors_snapshot_not_its_own(sweep: Path,
                                                                                     exploited: Any) -> None:
    member, result, server, watch = exploited
    donor_weights, donor_optimizer = _saved_state(_donor_snapshot(sweep), EXPLORED)
    own_snapshot = snapshot_path(member.pbt.snapshot_dir, EXPLOIT_EPOCH)
    own_weights, _ = _saved_state(own_snapshot, MEMBER_HPARAMS)

    assert [epoch for epoch, _ in server.calls] == list(range(EPOCHS))
    assert (result.epochs_run, result.stopped_by) == (EPOCHS, None)
    # The first epoch of the new segment starts from exactly the donor's weights and optimizer state.
    assert _same(watch.weights[EXPLOIT_EPOCH + 1], donor_weights)
    assert not _same(watch.weights[EXPLOIT_EPOCH + 1], own_weights)  # ray-project/ray#28360
    assert _same(list(_moments(watch.optimizer[EXPLOIT_EPOCH + 1]).values()), list(_moments(donor_optimizer).values()))
    # The member saved its own snapshot before reporting the boundary epoch: the one others would copy.
    assert population.snapshot_hparams(own_snapshot) == MEMBER_HPARAMS


def test_the_new_learning_rate_applies_from_the_next_epoch_and_dropout_is_rebuilt(exploited: Any) -> None:
    member, _, server, watch = exploited

    reported = [metrics["learning_rate"] for _, metrics in server.calls]
    assert reported == pytest.approx([0.001, 0.001, 0.05, 0.05])
    logged = _scalars(Path(member.logdir) / "train")["epoch_learning_rate"]
    assert logged == [(0, pytest.approx(0.001)), (1, pytest.approx(0.001)), (2, pytest.approx(0.05)),
                      (3, pytest.approx(0.05))]
    assert watch.dropout == {0: [], 1: [], 2: [0.25], 3: [0.25]}
    # The optimizer's step count goes on: the new segment is no new start for a schedule.
    assert int(watch.optimizer[EXPLOIT_EPOCH + 1]["iteration"]) == (EXPLOIT_EPOCH + 1) * 6


def test_the_members_curves_have_one_point_per_epoch_across_the_exploit(exploited: Any) -> None:
    member, *_ = exploited
    train, validation = _scalars(Path(member.logdir) / "train"), _scalars(Path(member.logdir) / "validation")

    for scalars in (train, validation):
        assert [step for step, _ in scalars["epoch_loss"]] == list(range(EPOCHS))
        assert [step for step, _ in scalars["epoch_accuracy"]] == list(range(EPOCHS))


def test_the_hparams_dashboard_lists_one_session_per_segment_with_member_parent_and_objective(
        sweep: Path, exploited: Any) -> None:
    member, _, server, _ = exploited
    val_accuracy = [metrics["val_accuracy"] for _, metrics in server.calls]

    groups = {group.name: group for group in _session_groups(sweep)}

    # No session for the member's own folder: its rows are its segments.
    assert sorted(groups) == ["trial-0003/segment-01", "trial-0007/segment-01", "trial-0007/segment-02"]
    first, second = groups["trial-0007/segment-01"], groups["trial-0007/segment-02"]
    hparams = {name: {key: getattr(value, value.WhichOneof("kind")) for key, value in group.hparams.items()}
               for name, group in groups.items()}
    assert hparams["trial-0007/segment-01"] == {**MEMBER_HPARAMS, "member": MEMBER, "parent": 0,
                                                "log10_learning_rate": pytest.approx(-3)}
    assert hparams["trial-0007/segment-02"] == {**EXPLORED, "member": MEMBER, "parent": DONOR,
                                                "log10_learning_rate": pytest.approx(np.log10(0.05))}
    for group, last_epoch in ((first, EXPLOIT_EPOCH), (second, EPOCHS - 1)):
        assert [session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]
        metrics = {(value.name.group, value.name.tag): value for value in group.metric_values}
        assert metrics[("", "val_accuracy")].value == pytest.approx(val_accuracy[last_epoch])
        assert metrics[("", "val_accuracy")].training_step == last_epoch
        assert metrics[("", "num_params")].value == server.calls[last_epoch][1]["num_params"]
    assert _session(Path(member.logdir)) == (None, None)


def test_the_checkpoint_after_an_exploit_holds_the_donors_weights_and_a_retry_resumes_the_new_segment(
        sweep: Path, tmp_path: Path) -> None:
    segments = [_segment(MEMBER_HPARAMS)]
    exploit = _exploit(_donor_snapshot(sweep))
    # The process dies reporting the first epoch of the new segment: the exploit's checkpoint is the last.
    with pytest.raises(_ProcessDied):
        run_trial(_member(tmp_path, MEMBER, segments), _Server(exploit, die_at=EXPLOIT_EPOCH + 1))
    resume = TrialCheckpoint(Path(tmp_path) / "trial-0007" / "checkpoint").load()
    assert resume is not None and resume.epochs_done == EXPLOIT_EPOCH + 1
    assert _same(_saved_state(resume.weights, EXPLORED)[0], _saved_state(_donor_snapshot(sweep), EXPLORED)[0])

    # The server has the new segment in the member's lineage now; the next claim has the next lease.
    retry = _member(tmp_path, MEMBER, [*segments, exploit.segment], lease_token=2)
    server, watch = _Server(), _ModelWatch()
    result = run_trial(retry, server, callbacks=[watch])

    assert (result.resumed_from, result.epochs_run) == (EXPLOIT_EPOCH + 1, EPOCHS)
    assert [metrics["learning_rate"] for _, metrics in server.calls] == pytest.approx([0.05, 0.05])
    assert watch.dropout == {2: [0.25], 3: [0.25]}
    assert _same(watch.weights[EXPLOIT_EPOCH + 1], _saved_state(_donor_snapshot(sweep), EXPLORED)[0])
    groups = {group.name: group for group in _session_groups(tmp_path)}
    assert sorted(groups) == ["trial-0007/segment-01", "trial-0007/segment-02"]
    assert all([session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]
               for group in groups.values())
    train = _scalars(tmp_path / "trial-0007" / "train")
    assert [step for step, _ in train["epoch_loss"]] == list(range(EPOCHS))


def test_a_member_that_died_before_saving_the_exploit_trains_the_epoch_again_and_gets_the_same_exploit(
        sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    segments = [_segment(MEMBER_HPARAMS)]
    exploit = _exploit(_donor_snapshot(sweep))
    own_snapshot = Path(snapshot_path(str(tmp_path / "pbt-snapshots" / "trial-0007"), EXPLOIT_EPOCH))

    def dies(*args: Any) -> None:
        raise _ProcessDied()

    with monkeypatch.context() as patch:
        patch.setattr(population, "load_donor_snapshot", dies)
        with pytest.raises(_ProcessDied):
            run_trial(_member(tmp_path, MEMBER, segments), _Server(exploit))
    first_snapshot = own_snapshot.read_bytes()

    # The server stored the exploit with the epoch's report: the lineage has the new segment already.
    server, watch = _Server(exploit), _ModelWatch()
    result = run_trial(_member(tmp_path, MEMBER, [*segments, exploit.segment], lease_token=2), server,
                       callbacks=[watch])

    # Epoch 1 is trained again with the first segment's hparams, then the exploit is carried out.
    assert result.resumed_from == EXPLOIT_EPOCH
    assert [(epoch, metrics["learning_rate"]) for epoch, metrics in server.calls] == \
        [(1, pytest.approx(0.001)), (2, pytest.approx(0.05)), (3, pytest.approx(0.05))]
    assert watch.dropout == {1: [], 2: [0.25], 3: [0.25]}
    assert _same(watch.weights[EXPLOIT_EPOCH + 1], _saved_state(_donor_snapshot(sweep), EXPLORED)[0])
    # The snapshot of the epoch trained again is the first attempt's: never written twice.
    assert own_snapshot.read_bytes() == first_snapshot
    groups = {group.name: group for group in _session_groups(tmp_path)}
    assert sorted(groups) == ["trial-0007/segment-01", "trial-0007/segment-02"]
    assert [session.status for session in groups["trial-0007/segment-01"].sessions] == [api_pb2.STATUS_SUCCESS]
    metrics = {value.name.tag: value for value in groups["trial-0007/segment-01"].metric_values}
    assert metrics["val_accuracy"].value == pytest.approx(server.calls[0][1]["val_accuracy"])


def test_a_snapshot_is_never_overwritten(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    target = snapshot_path(str(tmp_path), 5)

    assert population.save_snapshot(model, target, {"units": 2}) is True
    written = Path(target).read_bytes()
    model.layers[0].kernel.assign(np.ones((3, 2)))
    assert population.save_snapshot(model, target, {"units": 3}) is False

    assert Path(target).read_bytes() == written
    assert [path.name for path in tmp_path.iterdir()] == ["epoch-000005.weights.h5"]  # no temporary left


def test_an_exploit_whose_mutable_hparam_changes_the_architecture_fails_naming_snapshot_and_hparam(
        sweep: Path, tmp_path: Path) -> None:
    snapshot = _donor_snapshot(sweep)
    wider = {**DONOR_HPARAMS, "units": 24}

    with pytest.raises(SnapshotError) as failure:
        run_trial(_member(tmp_path, MEMBER, [_segment(MEMBER_HPARAMS)]), _Server(_exploit(snapshot, wider)))

    message = str(failure.value)
    assert snapshot in message and "member 3's snapshot of epoch 1" in message
    assert "units 16 -> 24" in message and "weight shapes" in message
    # The new segment's session ended as a failure; the one before it had handed over.
    groups = {group.name: group for group in _session_groups(tmp_path)}
    assert [session.status for session in groups["trial-0007/segment-02"].sessions] == [api_pb2.STATUS_FAILURE]
    assert [session.status for session in groups["trial-0007/segment-01"].sessions] == [api_pb2.STATUS_SUCCESS]


def test_an_exploit_whose_snapshot_is_missing_fails_naming_it(tmp_path: Path) -> None:
    missing = snapshot_path(str(tmp_path / "pbt-snapshots" / "trial-0003"), EXPLOIT_EPOCH)

    with pytest.raises(SnapshotError, match="does not exist") as failure:
        run_trial(_member(tmp_path, MEMBER, [_segment(MEMBER_HPARAMS)]), _Server(_exploit(missing)))

    assert missing in str(failure.value)
    assert not isinstance(failure.value, InfrastructureError)  # not retried: the server would answer the same


@pytest.mark.parametrize(("answer", "rule"), [
    (Action.exploit, "a Directive carrying its Exploit"),
    ("exploit-to-a-plain-trial", "no Population Based Training member"),
])
def test_an_exploit_answer_without_its_details_or_to_a_plain_trial_is_refused(tmp_path: Path, answer: Any,
                                                                              rule: str) -> None:
    member = _member(tmp_path, MEMBER, [_segment(MEMBER_HPARAMS)])
    if answer != Action.exploit:
        member = member.model_copy(update={"pbt": None})
        answer = Directive(action=Action.exploit, exploit=_exploit(str(tmp_path / "x.weights.h5")))

    with pytest.raises(ValueError, match=rule):
        run_trial(member, lambda epoch, metrics: answer)


def _members_spec(search: dict[str, Any]) -> Any:
    """A spec over the hparams the donor and member of these tests train with, with `search`."""
    from sweeper import parse_spec

    return parse_spec({"name": "pbt", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
                       "hparams": {"units": 16, "batch_size": 256, "seed": {"type": "discrete", "values": [1, 2]},
                                   "learning_rate": {"type": "real_interval", "min": 1e-4, "max": 0.1, "log": True},
                                   "dropout": {"type": "real_interval", "min": 0.0, "max": 0.5}},
                       "search": search, "train": {"epochs": EPOCHS}})


def test_under_a_sweep_config_declaring_member_and_parent_the_dashboard_shows_each_segment(
        sweep: Path, exploited: Any, tmp_path: Path) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    from sweeper.hparams_log import CONFIG_FILE, event_records, hparams_for, metrics_for

    _, _, server, _ = exploited
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(sweep, sweep_dir)
    spec = _members_spec({"max_trials": 2})
    # What the server writes for a pbt sweep: the spec's hparams, then `member` and `parent`.
    config = hp.hparams_config_pb([*hparams_for(spec), hp.HParam("member", hp.IntInterval(0, 8)),
                                   hp.HParam("parent", hp.IntInterval(0, 8))], metrics_for(spec))
    (sweep_dir / CONFIG_FILE).write_bytes(event_records([
        event_pb2.Event(wall_time=0, file_version="brain.Event:2").SerializeToString(),
        event_pb2.Event(wall_time=0, step=0, summary=config).SerializeToString()]))

    groups = {group.name: group for group in _session_groups(sweep_dir)}

    assert sorted(groups) == ["trial-0003/segment-01", "trial-0007/segment-01", "trial-0007/segment-02"]
    second = groups["trial-0007/segment-02"]
    assert (second.hparams["member"].number_value, second.hparams["parent"].number_value) == (MEMBER, DONOR)
    assert second.hparams["dropout"].number_value == 0.25
    metrics = {(value.name.group, value.name.tag): value.value for value in second.metric_values}
    assert metrics[("", "val_accuracy")] == pytest.approx(server.calls[-1][1]["val_accuracy"])


def test_a_pbt_sweeps_dashboard_shows_each_segments_losses_accuracies_and_learning_rate_at_its_end(
        sweep: Path, exploited: Any, tmp_path: Path) -> None:
    # A segment has no train/ and validation/ runs of its own (its member's curves stay one run), so the
    # pbt config's columns are the segment's last epoch: no row of the table is left with empty columns.
    from sweeper.hparams_log import write_experiment

    _, _, server, _ = exploited
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(sweep, sweep_dir)
    spec = _members_spec({"strategy": "pbt", "population": 8, "interval_epochs": INTERVAL,
                          "mutable": ["learning_rate", "dropout"]})
    write_experiment(sweep_dir, spec)

    groups = {group.name: group for group in _session_groups(sweep_dir)}

    reported = [metrics for _, metrics in server.calls]
    for name, last_epoch in (("trial-0007/segment-01", EXPLOIT_EPOCH), ("trial-0007/segment-02", EPOCHS - 1)):
        columns = {value.name.tag: value for value in groups[name].metric_values}
        assert {tag: column.value for tag, column in columns.items() if tag != "num_params"} == pytest.approx(
            {"val_accuracy": reported[last_epoch]["val_accuracy"],  # the objective, as a trial's
             **{f"segment_end/{key}": reported[last_epoch][key]
                for key in ("loss", "accuracy", "val_loss", "learning_rate")}}), name
        assert {column.training_step for column in columns.values()} == {last_epoch}
        assert {column.name.group for column in columns.values()} == {""}
    assert columns["segment_end/learning_rate"].value == pytest.approx(0.05)  # the explored rate, in its segment
