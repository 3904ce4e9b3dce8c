"""The sweep's HParams config and a trial's session, read back from the real event files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from sweeper import parse_spec
from sweeper.hparams_log import (CONFIG_FILE, SessionStatus, TrialSession, hparams_for, metrics_for,
                                 write_experiment)

SPEC = {
    "name": "digits-cnn",
    "model": "cnn",
    "dataset": "digits",
    "objective": {"metric": "val_accuracy", "goal": "maximize"},
    "hparams": {
        "filters": {"type": "discrete", "values": [16, 32, 64]},
        "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
        "blocks": {"type": "int_interval", "min": 1, "max": 3},
        "learning_rate": {"type": "real_interval", "min": 1.0e-4, "max": 1, "log": True},
        "optimizer": {"type": "discrete", "values": ["sgd", "adam"]},
        "momentum": {"type": "discrete", "values": [0, 0.9]},
        "batch_norm": {"type": "discrete", "values": [True, False]},
        "batch_size": 64,
        "lr_schedule": "cosine",
    },
    "search": {"strategy": "random", "max_trials": 4},
}

# Each log-scaled hparam is followed by its log10_ column.
WITH_LOG10_COLUMNS = ["filters", "dropout", "blocks", "learning_rate", "log10_learning_rate", "optimizer", "momentum",
                      "batch_norm", "batch_size", "lr_schedule"]


def test_a_log_scaled_hparam_also_shows_as_log10_over_the_log10_of_its_bounds(tmp_path: Path) -> None:
    write_experiment(tmp_path, parse_spec(SPEC))

    column = _hparam_infos(_read_experiment(tmp_path))["log10_learning_rate"]

    assert (column.domain_interval.min_value, column.domain_interval.max_value) == (-4.0, 0.0)
    assert column.type == api_pb2.DATA_TYPE_FLOAT64


def test_conditional_and_stepped_hparams_are_listed_with_their_rule(tmp_path: Path) -> None:
    spec = parse_spec({**SPEC, "hparams": {
        "optimizer": {"type": "discrete", "values": ["sgd", "adam"]},
        "momentum": {"type": "real_interval", "min": 0.5, "max": 0.9, "step": 0.1, "when": {"optimizer": "sgd"}},
    }})
    write_experiment(tmp_path, spec)

    momentum = _hparam_infos(_read_experiment(tmp_path))["momentum"]

    assert (momentum.domain_interval.min_value, momentum.domain_interval.max_value) == (0.5, 0.9)
    assert momentum.description == "In steps of 0.1 from 0.5. Only in trials where optimizer is 'sgd'."


def _read_experiment(sweep_dir: Path) -> api_pb2.Experiment:
    accumulator = EventAccumulator(str(sweep_dir))
    accumulator.Reload()
    content = accumulator.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    return metadata.parse_experiment_plugin_data(content)


def _hparam_infos(experiment: api_pb2.Experiment) -> dict[str, api_pb2.HParamInfo]:
    return {info.name: info for info in experiment.hparam_infos}


def _discrete_values(info: api_pb2.HParamInfo) -> list[Any]:
    return [getattr(value, value.WhichOneof("kind")) for value in info.domain_discrete.values]


def test_config_holds_each_hparams_exact_domain(tmp_path: Path) -> None:
    write_experiment(tmp_path, parse_spec(SPEC))

    infos = _hparam_infos(_read_experiment(tmp_path))

    assert list(infos) == WITH_LOG10_COLUMNS
    assert _discrete_values(infos["filters"]) == [16, 32, 64]
    assert infos["filters"].type == api_pb2.DATA_TYPE_FLOAT64
    assert (infos["dropout"].domain_interval.min_value, infos["dropout"].domain_interval.max_value) == (0.1, 0.5)
    assert (infos["blocks"].domain_interval.min_value, infos["blocks"].domain_interval.max_value) == (1, 3)
    assert (infos["learning_rate"].domain_interval.min_value,
            infos["learning_rate"].domain_interval.max_value) == (1.0e-4, 1.0)
    assert "log" in infos["learning_rate"].description
    # TensorBoard sorts discrete values.
    assert _discrete_values(infos["optimizer"]) == ["adam", "sgd"]
    assert infos["optimizer"].type == api_pb2.DATA_TYPE_STRING
    assert _discrete_values(infos["momentum"]) == [0.0, 0.9]
    assert _discrete_values(infos["batch_norm"]) == [False, True]
    assert infos["batch_norm"].type == api_pb2.DATA_TYPE_BOOL
    # Fixed values are one-value discrete domains, so they still show as columns.
    assert _discrete_values(infos["batch_size"]) == [64]
    assert _discrete_values(infos["lr_schedule"]) == ["cosine"]


def test_config_metrics_are_the_objective_the_trials_own_scalars_and_keras_epoch_scalars(tmp_path: Path) -> None:
    write_experiment(tmp_path, parse_spec(SPEC))

    metrics = [(info.name.group, info.name.tag) for info in _read_experiment(tmp_path).metric_infos]

    assert metrics == [
        ("", "val_accuracy"), ("", "num_params"), ("", "pruned_at_epoch"),
        ("train", "epoch_loss"), ("validation", "epoch_loss"),
        ("train", "epoch_accuracy"), ("validation", "epoch_accuracy"),
        ("train", "epoch_learning_rate"),
    ]
    assert all(info.display_name for info in _read_experiment(tmp_path).metric_infos)


def test_config_describes_num_params_and_that_only_pruned_trials_have_pruned_at_epoch(tmp_path: Path) -> None:
    write_experiment(tmp_path, parse_spec(SPEC))

    infos = {info.name.tag: info for info in _read_experiment(tmp_path).metric_infos if not info.name.group}

    assert infos["num_params"].display_name == "parameters"
    assert "parameter count" in infos["num_params"].description
    assert infos["pruned_at_epoch"].display_name == "pruned at epoch"
    assert infos["pruned_at_epoch"].description.startswith("Only pruned trials have it: the number of epochs")


def test_num_params_as_the_objective_is_one_column(tmp_path: Path) -> None:
    write_experiment(tmp_path, parse_spec({**SPEC, "objective": {"metric": "num_params", "goal": "minimize"}}))

    infos = [info for info in _read_experiment(tmp_path).metric_infos if not info.name.group]

    assert [(info.name.tag, info.display_name) for info in infos] == [
        ("num_params", "num_params (objective)"), ("pruned_at_epoch", "pruned at epoch")]
    assert infos[0].description == "The trial's final num_params; the sweep's goal is to minimize it."


def test_hparams_and_metrics_for_match_the_spec() -> None:
    spec = parse_spec(SPEC)

    assert [hparam.name for hparam in hparams_for(spec)] == WITH_LOG10_COLUMNS
    assert metrics_for(spec)[0].as_proto().name.tag == "val_accuracy"


def test_second_write_adds_no_second_config(tmp_path: Path) -> None:
    spec = parse_spec(SPEC)
    write_experiment(tmp_path, spec)
    before = (tmp_path / CONFIG_FILE).read_bytes()

    write_experiment(tmp_path, spec)

    assert [path.name for path in tmp_path.iterdir()] == [CONFIG_FILE]
    assert (tmp_path / CONFIG_FILE).read_bytes() == before


def test_write_experiment_creates_the_sweep_folder(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "logs" / "12"

    write_experiment(str(sweep_dir), parse_spec(SPEC))

    assert (sweep_dir / CONFIG_FILE).is_file()


def test_config_is_written_without_loading_tensorflow(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import sweeper.hparams_log as hparams_log\n"
        "assert 'tensorflow' not in sys.modules, 'importing sweeper.hparams_log loaded tensorflow'\n"
        "from sweeper import parse_spec\n"
        f"hparams_log.write_experiment(sys.argv[1], parse_spec(json.loads(sys.argv[2])))\n"
        "assert 'tensorflow' not in sys.modules, 'write_experiment loaded tensorflow'\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(SPEC)],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / CONFIG_FILE).is_file()


def _read_session(trial_dir: Path) -> tuple[Any, Any, dict[str, list[float]]]:
    accumulator = EventAccumulator(str(trial_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    start = metadata.parse_session_start_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    end = (metadata.parse_session_end_info_plugin_data(
        accumulator.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content)
        if metadata.SESSION_END_INFO_TAG in tags else None)
    import tensorflow as tf

    scalars = {tag: [float(tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]
               for tag in tags if not tag.startswith("_hparams_/")}
    return start, end, scalars


def test_trial_session_writes_start_objective_and_success(tmp_path: Path) -> None:
    with TrialSession(tmp_path, 7, {"units": 32, "optimizer": "adam", "dropout": 0.25}) as session:
        session.write_objective("val_accuracy", 0.75, step=2)

    start, end, scalars = _read_session(tmp_path)

    assert start.group_name == "7"
    assert {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()} \
        == {"units": 32, "optimizer": "adam", "dropout": 0.25}
    assert end.status == api_pb2.STATUS_SUCCESS
    assert scalars == {"val_accuracy": [0.75]}


def test_trial_session_writes_scalars_into_the_trials_own_folder(tmp_path: Path) -> None:
    with TrialSession(tmp_path, 7, {"units": 32}) as session:
        session.write_scalars({"val_accuracy": 0.75, "num_params": 1210}, step=2)
        session.write_scalars({"pruned_at_epoch": 3}, step=2)
        session.status = SessionStatus.aborted

    _, end, scalars = _read_session(tmp_path)

    assert scalars == {"val_accuracy": [0.75], "num_params": [1210.0], "pruned_at_epoch": [3.0]}
    assert end.status == getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN)


def test_trial_session_ends_as_failure_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with TrialSession(tmp_path, "8", {"units": 16}):
            raise RuntimeError("boom")

    start, end, scalars = _read_session(tmp_path)

    assert start.group_name == "8"
    assert end.status == api_pb2.STATUS_FAILURE
    assert scalars == {}


def test_trial_session_adds_log10_columns_for_log_scaled_hparams(tmp_path: Path) -> None:
    hparams = {"learning_rate": 0.001, "weight_decay": 1e-5, "units": 100, "optimizer": "adam"}

    with TrialSession(tmp_path, 3, hparams, log_scaled=["learning_rate", "units", "not_in_this_trial"]):
        pass

    start, _, _ = _read_session(tmp_path)
    written = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    assert written == {**hparams, "log10_learning_rate": pytest.approx(-3.0), "log10_units": pytest.approx(2.0)}


@pytest.mark.parametrize("value", [0, -0.1, "0.1", True])
def test_trial_session_refuses_a_log_scaled_value_without_a_logarithm(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ValueError, match=r"hparam learning_rate is searched on a log scale, so it must be a "
                                         r"number > 0, but got"):
        TrialSession(tmp_path, 3, {"learning_rate": value}, log_scaled=["learning_rate"])


def test_trial_session_ends_with_the_status_the_trainer_set(tmp_path: Path) -> None:
    with TrialSession(tmp_path, 4, {"units": 16}) as session:
        session.status = SessionStatus.aborted

    _, end, _ = _read_session(tmp_path)

    # TensorBoard 2.21 has no ABORTED; UNKNOWN is the status its dashboard shows and filters.
    assert end.status == getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN)
    assert end.end_time_secs > 0


def test_trial_session_without_a_status_writes_no_end(tmp_path: Path) -> None:
    with TrialSession(tmp_path, 5, {"units": 16}) as session:
        session.write_objective("val_accuracy", 0.5, step=0)
        session.status = None

    start, end, scalars = _read_session(tmp_path)

    assert (start.group_name, end) == ("5", None)
    assert scalars == {"val_accuracy": [0.5]}


def test_an_exception_ends_the_session_as_failure_whatever_status_was_set(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with TrialSession(tmp_path, 6, {"units": 16}) as session:
            session.status = None
            raise RuntimeError("boom")

    assert _read_session(tmp_path)[1].status == api_pb2.STATUS_FAILURE


def test_session_statuses_map_to_tensorboards() -> None:
    assert [status.proto for status in SessionStatus] == [
        api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN)]


def test_the_hparams_that_vary_are_marked_so_and_listed_before_the_fixed_ones(tmp_path: Path) -> None:
    # batch_size first in the spec and first by name: TensorBoard must still not take it for a varying one.
    spec = parse_spec({**SPEC, "hparams": {
        "batch_size": 32,
        "dense_units": {"type": "discrete", "values": [16, 32, 64]},
        "activation": {"type": "discrete", "values": ["relu"]},
        "learning_rate": {"type": "real_interval", "min": 1.0e-4, "max": 1.0e-1, "log": True},
        "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
        "lr_schedule": {"type": "discrete", "values": ["constant", "step", "cosine"]},
    }})
    write_experiment(tmp_path, spec)

    infos = _read_experiment(tmp_path).hparam_infos

    assert [(info.name, info.differs) for info in infos] == [
        ("dense_units", True), ("learning_rate", True), ("log10_learning_rate", True), ("optimizer", True),
        ("lr_schedule", True), ("batch_size", False), ("activation", False)]
