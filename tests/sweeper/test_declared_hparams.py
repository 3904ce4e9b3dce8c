"""The built-in models, schedules, optimizers and the runner read only hparams their model declares.

A spec may name only declared hparams, so an hparam read but not declared could never be set: each test
hands the code a mapping that records every name it looks up, and compares them with the declaration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sweeper import _registry
from sweeper._model_hparams import TRAINING_HPARAMS
from sweeper._schedule_params import SCHEDULES
from sweeper._spec import Objective, TrainSettings
from sweeper.messages import Assignment
from sweeper.training.datasets import DatasetInfo


class Recording(Mapping[str, Any]):
    """The trial's hparams, remembering every name the code asked for, present or not."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.asked.add(name)
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.asked.add(name)
        return name in self._values

    def get(self, name: str, default: Any = None) -> Any:
        self.asked.add(name)
        return self._values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@pytest.mark.parametrize("model, shape", [("mlp", (8, 8, 1)), ("cnn", (8, 8, 1))])
def test_a_built_in_model_reads_only_the_hparams_it_declares(model: str, shape: tuple[int, ...]) -> None:
    hparams = Recording({"batch_norm": True})

    _registry.models.get(model)(hparams, DatasetInfo(input_shape=shape, num_classes=3))

    declared = _registry.models.hparams_of(model) or set()
    assert hparams.asked and hparams.asked <= declared - TRAINING_HPARAMS


@pytest.mark.training
def test_the_transfer_model_reads_only_the_hparams_it_declares() -> None:
    hparams = Recording({"image_size": 32, "head_units": 4})

    _registry.models.get("transfer")(hparams, DatasetInfo(input_shape=(8, 8, 1), num_classes=3))

    assert hparams.asked == (_registry.models.hparams_of("transfer") or set()) - TRAINING_HPARAMS


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop", "adamw", "nadam"])
def test_the_optimizer_and_every_schedule_read_only_training_hparams(schedule: str, optimizer: str) -> None:
    from sweeper.training.schedules import build_learning_rate, build_optimizer, schedule_callbacks

    hparams = Recording({"lr_schedule": schedule, "optimizer": optimizer, "momentum": 0.5, "weight_decay": 0.01})

    build_optimizer(hparams, build_learning_rate(hparams, epochs=6, steps_per_epoch=4))
    schedule_callbacks(hparams)

    assert {"lr_schedule", "optimizer", "learning_rate"} <= hparams.asked <= TRAINING_HPARAMS


@pytest.mark.training
def test_a_trial_reads_only_declared_hparams(tmp_path: Path) -> None:
    from sweeper.training.runner import run_trial

    hparams = Recording({"units": 8, "batch_size": 64})
    assignment = Assignment(
        trial_id=1, sweep_id=1, number=1, hparams={}, model="mlp", dataset="iris", objective=Objective(metric="val_accuracy"),
        train=TrainSettings(epochs=1), logdir=str(tmp_path / "1"), checkpoint_dir=str(tmp_path / "checkpoint"),
        lease_expires_at=datetime.now(timezone.utc) + timedelta(minutes=5), lease_token=1)

    run_trial(assignment.model_copy(update={"hparams": hparams}), lambda epoch, metrics: "continue")

    assert {"units", "batch_size", "seed", "optimizer", "lr_schedule"} <= hparams.asked
    assert hparams.asked <= (_registry.models.hparams_of("mlp") or set())
