"""A pbt sweep's HParams config declares `member` and `parent`, the hparams of each segment's session."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from sweeper import parse_spec
from sweeper.hparams_log import hparams_for, write_experiment

SPEC = {"name": "pbt", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
        "hparams": {"learning_rate": {"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True}, "units": 64},
        "search": {"strategy": "pbt", "population": 6, "interval_epochs": 2, "mutable": ["learning_rate"]}}


def test_a_pbt_sweeps_config_declares_member_and_parent_over_0_to_population(tmp_path: Path) -> None:
    write_experiment(tmp_path, parse_spec(SPEC))

    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    experiment = metadata.parse_experiment_plugin_data(
        accumulator.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content)
    infos = {info.name: info for info in experiment.hparam_infos}

    for name in ("member", "parent"):
        assert (infos[name].domain_interval.min_value, infos[name].domain_interval.max_value) == (0, 6)
    assert list(infos)[-2:] == ["member", "parent"]


def test_other_sweeps_have_no_member_or_parent() -> None:
    spec = {**SPEC, "search": {"strategy": "random", "max_trials": 3}}
    assert {hparam.name for hparam in hparams_for(parse_spec(spec))}.isdisjoint({"member", "parent"})
