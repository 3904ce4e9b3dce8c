"""docs/spec.md describes every spec field, its examples are valid, and examples/ has a spec per built-in model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from sweeper import (Discrete, Fixed, IntInterval, Objective, RealInterval, SearchSettings, SweepSpec, TrainSettings,
                     _registry, load_spec)
from sweeper._spec import EarlyStopping

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "spec.md").read_text()
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MODELS: list[type[BaseModel]] = [SweepSpec, Objective, SearchSettings, TrainSettings, EarlyStopping,
                                 Discrete, RealInterval, IntInterval, Fixed]


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_field_of_the_spec_is_described(model: type[BaseModel]) -> None:
    missing = [name for name in model.model_fields if name != "type" and f"`{name}`" not in DOC]

    assert not missing, f"docs/spec.md does not describe {model.__name__} fields {missing}"


@pytest.mark.parametrize("default", [
    ("epochs", TrainSettings().epochs), ("batch_size", TrainSettings().batch_size),
    ("validation_split", TrainSettings().validation_split), ("loss", TrainSettings().loss),
    ("grid_points", SearchSettings().grid_points), ("strategy", SearchSettings().strategy),
    ("goal", Objective(metric="m").goal), ("epoch", Objective(metric="m").epoch),
], ids=lambda default: default[0])
def test_the_documented_defaults_are_the_real_ones(default: tuple[str, object]) -> None:
    name, value = default
    row = next(line for line in DOC.splitlines() if line.startswith(f"| `{name}` |"))

    assert f"`{value}`" in row, row


def _yaml_blocks() -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOC, flags=re.S)]


@pytest.mark.parametrize("block", _yaml_blocks(), ids=lambda block: next(iter(block)))
def test_the_docs_yaml_examples_are_valid_spec_parts(block: dict, tmp_path: Path) -> None:
    spec = {"name": "doc", "model": "mlp", "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": {"units": 32}, "train": {"metrics": ["accuracy", "auc"]},
            "search": {"max_trials": 5}, **block}
    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(spec))

    load_spec(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_spec_is_valid(path: Path) -> None:
    load_spec(path)


def test_examples_hold_a_spec_for_every_built_in_model() -> None:
    covered = {load_spec(path).model for path in EXAMPLES}

    assert {"mlp", "cnn", "transfer"} <= covered
    assert {"mlp", "cnn", "transfer"} <= set(_registry.models.names())
