"""Spec limits: each refused at its field with the limit named, by the core (so `sweeper check` too), each
documented in docs/spec.md with its real value, and none making validation slow up to the limit."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from api.settings import Settings
from cli import app
from sweeper import SpecError, TrainSettings, parse_spec
from sweeper._conditions import MAX_BRANCHES
from sweeper._domains import MAX_DISCRETE_VALUES, MAX_HPARAMS, MAX_TEXT_LENGTH
from sweeper._spec import MAX_CLASS_WEIGHTS, MAX_HPARAM_NAME_LENGTH, MAX_NAME_LENGTH

# Specs of many hparams, more than one model reads: see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("any_hparams_model")

ROOT = Path(__file__).resolve().parents[2]
EPOCHS_LIMIT = next(rule.le for rule in TrainSettings.model_fields["epochs"].metadata if hasattr(rule, "le"))
LIMITS_SECTION = (ROOT / "docs" / "spec.md").read_text().split("## Limits", 1)[1].split("\n## ", 1)[0]


def spec(**hparams: Any) -> dict[str, Any]:
    return {"name": "limits", "model": "any_hparams", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"units": {"type": "discrete", "values": [16, 32]}, **hparams},
            "search": {"strategy": "grid"}}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as error:
        parse_spec(data)
    return error.value.messages


OVER = {
    "hparams": (spec(**{f"h{i}": 1 for i in range(MAX_HPARAMS)}),
                f"hparams: at most {MAX_HPARAMS} hparams, but got {MAX_HPARAMS + 1}"),
    "discrete values": (spec(units={"type": "discrete", "values": list(range(MAX_DISCRETE_VALUES + 1))}),
                        f"hparams.units.values: at most {MAX_DISCRETE_VALUES} values, but got "
                        f"{MAX_DISCRETE_VALUES + 1}"),
    "condition values": (spec(m={"type": "fixed", "value": 1, "when": {"units": list(range(MAX_DISCRETE_VALUES + 1))}}),
                         f"hparams.m.when.units: at most {MAX_DISCRETE_VALUES} values, but got "
                         f"{MAX_DISCRETE_VALUES + 1}"),
    "conditions": (spec(m={"type": "fixed", "value": 1, "when": {f"p{i}": 1 for i in range(MAX_HPARAMS + 1)}}),
                   f"hparams.m.when: at most {MAX_HPARAMS} conditions, but got {MAX_HPARAMS + 1}"),
    "discrete string": (spec(act={"type": "discrete", "values": ["relu", "x" * (MAX_TEXT_LENGTH + 1)]}),
                        f"hparams.act.values.1: must be at most {MAX_TEXT_LENGTH} characters, but got "
                        f"{MAX_TEXT_LENGTH + 1}"),
    "fixed string": (spec(act={"type": "fixed", "value": "x" * (MAX_TEXT_LENGTH + 1)}),
                     f"hparams.act.value: must be at most {MAX_TEXT_LENGTH} characters"),
    "bare string": (spec(act="x" * (MAX_TEXT_LENGTH + 1)),
                    f"hparams.act: a fixed value must be at most {MAX_TEXT_LENGTH} characters"),
    "hparam name": (spec(**{"h" * (MAX_HPARAM_NAME_LENGTH + 1): 1}),
                    f"at most {MAX_HPARAM_NAME_LENGTH} characters"),
    "name": ({**spec(), "name": "n" * (MAX_NAME_LENGTH + 1)}, f"name: String should have at most {MAX_NAME_LENGTH}"),
    "class weights": ({**spec(), "train": {"class_weight": {i: 1.0 for i in range(MAX_CLASS_WEIGHTS + 1)}}},
                      f"train.class_weight: at most {MAX_CLASS_WEIGHTS} classes, but got {MAX_CLASS_WEIGHTS + 1}"),
}


@pytest.mark.parametrize("data, message", OVER.values(), ids=OVER.keys())
def test_one_over_a_limit_is_refused_at_the_field_naming_the_limit(data: dict[str, Any], message: str):
    assert any(message in problem for problem in problems(data)), problems(data)


AT = {
    "hparams": spec(**{f"h{i}": 1 for i in range(MAX_HPARAMS - 1)}),
    "discrete values": spec(units={"type": "discrete", "values": list(range(MAX_DISCRETE_VALUES))}),
    "strings": spec(act={"type": "discrete", "values": ["a" * MAX_TEXT_LENGTH, "b" * MAX_TEXT_LENGTH]}),
    "name": {**spec(), "name": "n" * MAX_NAME_LENGTH},
}


@pytest.mark.parametrize("data", AT.values(), ids=AT.keys())
def test_a_spec_at_a_limit_is_valid(data: dict[str, Any]):
    parse_spec(data)


def test_far_too_many_hparams_are_refused_by_their_count_alone():
    data = spec(**{f"h{i}": {"type": "discrete", "values": []} for i in range(100_000)})

    assert problems(data) == [f"hparams: at most {MAX_HPARAMS} hparams, but got 100001"]


def test_a_condition_over_thousands_of_values_is_checked_in_linear_time():
    # Membership was a scan per lookup: this spec took 35 s to validate before it became a set lookup.
    values = list(range(MAX_DISCRETE_VALUES))
    data = spec(units={"type": "discrete", "values": values},
                momentum={"type": "fixed", "value": 0.9, "when": {"units": values}})

    started = time.perf_counter()
    parse_spec(data)

    assert time.perf_counter() - started < 5


def test_sweeper_check_reports_a_limit_with_the_file_and_the_field(tmp_path: Path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(OVER["discrete values"][0]))

    result = CliRunner().invoke(app, ["check", str(path)], env={"COLUMNS": "300"})

    assert result.exit_code == 2
    assert re.search(rf"{re.escape(str(path))}:\d+: {re.escape(OVER['discrete values'][1])}",
                     " ".join(result.output.split()))


def _row(label: str) -> str:
    row = next((line for line in LIMITS_SECTION.splitlines() if line.startswith(f"| {label}")), None)
    assert row is not None, f"docs/spec.md's Limits section has no row for {label!r}"
    return row


@pytest.mark.parametrize("label, value", [
    ("hparams in a sweep", MAX_HPARAMS), ("values of a `discrete` domain", MAX_DISCRETE_VALUES),
    ("values listed in one condition", MAX_DISCRETE_VALUES), ("conditions of one hparam", MAX_HPARAMS),
    ("combinations of the values", MAX_BRANCHES), ("characters in a string value", MAX_TEXT_LENGTH),
    ("characters in `name`", MAX_NAME_LENGTH), ("characters in an hparam's name", MAX_HPARAM_NAME_LENGTH),
    ("classes weighed", MAX_CLASS_WEIGHTS), ("`epochs`", EPOCHS_LIMIT),
    ("trials in one sweep", Settings.model_fields["max_sweep_trials"].default),
    ("bytes in a request body", Settings.model_fields["max_body_bytes"].default),
], ids=lambda item: str(item))
def test_every_limit_is_documented_with_its_real_value(label: str, value: int):
    cells = [cell.strip() for cell in _row(label).strip("|").split("|")]

    assert re.match(rf"{value:,}\b", cells[1]), cells
