"""The sweep spec accepts what DESIGN.md shows and rejects bad input naming the field and the rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper import Discrete, Fixed, IntInterval, RealInterval, SpecError, load_spec, parse_spec

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits.yaml"


def spec(**overrides):
    data = {
        "name": "digits-mlp",
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "goal": "maximize"},
        "hparams": {
            "units": {"type": "discrete", "values": [16, 32, 64]},
            "dropout": {"type": "real_interval", "min": 0.1, "max": 0.5},
            "depth": {"type": "int_interval", "min": 1, "max": 3},
            "learning_rate": {"type": "real_interval", "min": 1.0e-4, "max": 1.0e-1, "log": True},
            "optimizer": {"type": "discrete", "values": ["adam", "sgd"]},
            "batch_size": 64,
        },
        "search": {"strategy": "random", "max_trials": 20, "seed": 0},
        "train": {"epochs": 10, "validation_split": 0.2},
    }
    data.update(overrides)
    return data


def rejection(data) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return str(caught.value)


def test_design_example_parses_into_typed_domains():
    parsed = parse_spec(spec())
    space = parsed.search_space()
    assert space["units"] == Discrete(values=[16, 32, 64])
    assert space["dropout"] == RealInterval(min=0.1, max=0.5)
    assert space["depth"] == IntInterval(min=1, max=3)
    assert space["learning_rate"].log is True
    assert space["batch_size"] == Fixed(value=64)
    assert parsed.objective.goal == "maximize"


def test_normalised_spec_round_trips_through_json():
    parsed = parse_spec(spec())
    assert parse_spec(json.loads(json.dumps(parsed.to_json()))) == parsed


def test_reversed_interval_names_field_and_rule():
    bad = spec(hparams={"dropout": {"type": "real_interval", "min": 0.5, "max": 0.1}})
    assert rejection(bad) == "hparams.dropout: min (0.5) must be < max (0.1)"


@pytest.mark.parametrize(("hparam", "expected"), [
    ({"type": "discrete", "values": [1, "a"]}, "hparams.x: values must all be of one type"),
    ({"type": "discrete", "values": [True, 1]}, "hparams.x: values must all be of one type"),
    ({"type": "discrete", "values": []}, "hparams.x: values must not be empty"),
    ({"type": "discrete", "values": [1, 1]}, "hparams.x: values must not repeat"),
    ({"type": "discrete", "values": [1], "step": 2}, "hparams.x.step: unknown field"),
    ({"type": "cube", "values": [1]}, "hparams.x: type must be one of discrete, real_interval, int_interval"),
    ({"values": [1]}, "hparams.x: needs a type"),
    ({"type": "int_interval", "min": 1.5, "max": 3}, "hparams.x.min: must be an integer, but got float 1.5"),
    ({"type": "real_interval", "min": 0, "max": 1, "log": True}, "hparams.x: min (0) must be > 0 when log is true"),
    ([1, 2], "hparams.x: a fixed value must be a number, a string or a bool, but got list [1, 2]"),
    (float("nan"), "hparams.x: a fixed value must be a finite number, but got nan"),
    ({"type": "discrete", "values": [0.5, float("inf")]}, "hparams.x.values.1: must be a finite number, but got inf"),
    ({"type": "int_interval", "min": 1, "max": 10**400}, "hparams.x.max: must be within +-2**53 to stay exact"),
    ({"type": "real_interval", "min": True, "max": 2}, "hparams.x.min: must be a number, but got bool True"),
])
def test_bad_domain_is_rejected_with_its_path(hparam, expected):
    assert rejection(spec(hparams={"x": hparam})).startswith(expected)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"search": {"strategy": "bayes"}},
     "search.strategy: Input should be 'grid', 'random', 'tpe', 'gp', 'cmaes', 'nsga2' or 'pbt'"),
    ({"model": "resnet9000"}, "model: unknown model 'resnet9000'; registered models: cnn, mlp"),
    ({"dataset": "imagenet"}, "dataset: unknown dataset 'imagenet'"),
    ({"colour": "blue"}, "colour: unknown field"),
    ({"objective": {"metric": "val_accuracy", "goal": "up"}}, "objective.goal: Input should be 'maximize' or 'minimize'"),
    ({"train": {"validation_split": 1.5}}, "train.validation_split: Input should be less than 1"),
    ({"search": {"strategy": "grid", "grid_points": 1}}, "search.grid_points: Input should be greater than or equal to 2"),
    ({"search": {"strategy": "random"}}, "search.max_trials: is required for random search over intervals"),
    ({"hparams": {}}, "hparams: Dictionary should have at least 1 item"),
    ({"name": ""}, "name: String should have at least 1 character"),
])
def test_bad_spec_field_is_rejected_with_its_path(overrides, expected):
    assert rejection(spec(**overrides)).startswith(expected)


def test_every_problem_is_reported_at_once():
    problems = parse_problems(spec(model="nope", hparams={"a": {"type": "discrete", "values": []}}))
    assert ("model",) in problems and ("hparams", "a") in problems


def test_a_bad_domain_an_unknown_hparam_and_an_unknown_metric_are_reported_in_one_pass():
    hparams = {**spec()["hparams"], "dropout": {"type": "real_interval", "min": 0.5, "max": 0.1},
               "unitz": {"type": "discrete", "values": [8, 16]}}
    problems = parse_problems(spec(hparams=hparams, objective={"metric": "val_acc"}))

    assert sorted(problems) == [("hparams", "dropout"), ("hparams", "unitz"), ("objective", "metric")]


def test_checks_across_fields_still_run_when_other_fields_are_broken():
    problems = parse_problems(spec(
        name="",
        train={"epochs": 0, "metrics": ["accuracy"], "early_stopping": {"patience": 1, "monitor": "val_auc"}},
        stopping={"rule": "asha", "reduction_factor": 1},
        search={"strategy": "tpe"},
        hparams={**spec()["hparams"], "momentum": {"type": "real_interval", "min": 0.5, "max": 0.9,
                                                   "when": {"optimizer": "lbfgs"}},
                 "lr_schedule": "cosine_warm", "warmup_epochs": -1}))

    assert sorted(problems) == [("hparams", "lr_schedule"), ("hparams", "momentum", "when", "optimizer"),
                                ("hparams", "warmup_epochs"), ("name",), ("search", "max_trials"),
                                ("stopping", "reduction_factor"), ("train", "early_stopping", "monitor"),
                                ("train", "epochs")]


def test_a_check_that_needs_a_broken_field_is_skipped_rather_than_guessed():
    # With train.metrics broken, which metrics the trial logs is unknown: the objective is not judged.
    problems = parse_problems(spec(train={"metrics": ["acuracy"]}, objective={"metric": "val_auc"}))
    assert problems == [("train", "metrics", 0)]
    # With the model unknown, so are the hparams it reads.
    problems = parse_problems(spec(model="nope", hparams={**spec()["hparams"], "unitz": 8}))
    assert problems == [("model",)]


def parse_problems(data):
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return [path for path, _ in caught.value.problems]


def test_spec_that_is_not_a_mapping_is_rejected():
    assert "must be a mapping, but got list" in rejection([1, 2])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nhparams:\n  units: {type: discrete, values: [1, 2\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).startswith(f"{path}: line 4: invalid YAML")


def test_yaml_file_rule_error_names_file_and_field(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nmodel: mlp\ndataset: digits\nobjective: {metric: val_accuracy}\n"
                    "hparams:\n  dropout: {type: real_interval, min: 0.5, max: 0.1}\n")
    with pytest.raises(SpecError, match=r"sweep.yaml: hparams.dropout: min \(0.5\) must be < max \(0.1\)") as caught:
        load_spec(path)
    assert caught.value.lines == [f"{path}:6: hparams.dropout: min (0.5) must be < max (0.1)"]


def test_each_problem_of_a_yaml_file_names_its_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nmodel: mlp\ndataset: digits\nobjective:\n  metric: val_acc\nhparams:\n"
                    "  units: {type: discrete, values: [8, 16]}\n  unitz: {type: discrete, values: [8, 16]}\n"
                    "  dropout:\n    type: real_interval\n    min: 0.1\n    max: 0.5\n    log: maybe\n"
                    "train: {epochs: 3, batchsize: 8}\nsearch: {strategy: random, max_trials: 3}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    lines = caught.value.lines  # in the file's order
    assert [line.split(": ")[0] for line in lines] == [f"{path}:{n}" for n in (5, 8, 13, 14)], lines
    assert lines[0].startswith(f"{path}:5: objective.metric: 'val_acc' is not a metric the trial logs")
    assert lines[1].startswith(f"{path}:8: hparams.unitz: model mlp reads no hparam 'unitz'; did you mean units?")
    assert lines[2].startswith(f"{path}:13: hparams.dropout.log: ")
    assert lines[3] == f"{path}:14: train.batchsize: unknown field (not allowed here)"


def test_a_problem_about_a_missing_field_names_the_line_of_its_parent(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nmodel: mlp\ndataset: digits\nobjective: {goal: maximize}\nhparams: {units: 8}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.lines == [f"{path}:4: objective.metric: Field required"]


def test_json_spec_file_is_read(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(spec()))
    assert load_spec(path).name == "digits-mlp"


def test_shipped_example_is_valid_and_mixes_all_domain_types():
    parsed = load_spec(EXAMPLE)
    kinds = {type(domain).__name__ for domain in parsed.search_space().values()}
    assert {"Discrete", "RealInterval", "IntInterval"} <= kinds
    assert any(getattr(d, "log", False) for d in parsed.search_space().values())
    assert "lr_schedule" in parsed.hparams


def test_importing_sweeper_loads_no_tensorflow_fastapi_or_sqlalchemy():
    code = ("import sys, sweeper, sweeper.messages, sweeper.client\n"
            "heavy = [m for m in ('tensorflow', 'fastapi', 'sqlalchemy') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("hparams", "expected"), [
    ({"lr_schedule": "warp"}, "hparams.lr_schedule: unknown lr_schedule 'warp'; known schedules: constant"),
    ({"lr_schedule": {"type": "discrete", "values": ["cosine", "nope"]}}, "hparams.lr_schedule: unknown lr_schedule 'nope'"),
    ({"lr_decay_factor": {"type": "real_interval", "min": 0.5, "max": 2.0}},
     "hparams.lr_decay_factor: lr_decay_factor must be in (0, 1], but the interval's max is 2.0"),
])
def test_learning_rate_schedule_parameters_are_checked_at_submit_time(hparams, expected):
    assert rejection(spec(hparams=hparams)).startswith(expected)


def test_the_models_parameter_count_is_a_metric_a_sweep_can_minimize():
    parsed = parse_spec(spec(objective={"metric": "num_params", "goal": "minimize"}))

    assert (parsed.objective.metric, parsed.objective.goal) == ("num_params", "minimize")
    assert "num_params" in parsed.train.metric_names()


def test_a_sweep_can_trade_accuracy_off_against_the_parameter_count():
    parsed = parse_spec(spec(objective=[{"metric": "val_accuracy", "goal": "maximize"},
                                        {"metric": "num_params", "goal": "minimize"}]))

    assert [(objective.metric, objective.goal) for objective in parsed.all_objectives] == \
        [("val_accuracy", "maximize"), ("num_params", "minimize")]


def test_an_unknown_objective_metric_is_rejected_naming_what_a_trial_logs():
    assert rejection(spec(objective={"metric": "val_f1"})) == (
        "objective.metric: 'val_f1' is not a metric the trial logs; with train.metrics ['accuracy'] it logs: "
        "loss, accuracy, val_loss, val_accuracy, learning_rate, num_params")


def test_early_stopping_cannot_watch_the_parameter_count_which_never_changes():
    bad = spec(train={"epochs": 10, "early_stopping": {"patience": 2, "monitor": "num_params"}})

    assert rejection(bad) == ("train.early_stopping.monitor: 'num_params' is the model's parameter count, which "
                              "training never changes: early stopping cannot watch it")
