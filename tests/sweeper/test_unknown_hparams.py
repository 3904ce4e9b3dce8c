"""An hparam that the sweep's model does not read is refused, so a misspelled name never silently does nothing."""

from __future__ import annotations

from typing import Any

import pytest

from sweeper import SpecError, _registry, parse_spec
from sweeper._model_hparams import TRAINING_HPARAMS


def _spec(model: str = "mlp", **hparams: Any) -> dict[str, Any]:
    return {"name": "s", "model": model, "dataset": "digits", "objective": {"metric": "val_accuracy"},
            "hparams": hparams or {"units": 8}, "search": {"strategy": "grid"}}


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return {".".join(map(str, path)): message for path, message in caught.value.problems}


def test_a_misspelled_hparam_is_refused_with_a_suggestion_and_the_names_the_model_reads() -> None:
    problems = _problems(_spec(unitz={"type": "discrete", "values": [8, 16]}))

    message = problems["hparams.unitz"]
    assert "model mlp reads no hparam 'unitz'" in message
    assert "did you mean units?" in message
    for name in ("units", "depth", "dropout", "activation", "optimizer", "learning_rate", "batch_size"):
        assert name in message


def test_every_name_a_built_in_model_declares_is_accepted_for_it() -> None:
    # Each declared name alone, as a searched domain that passes its own range checks where it has them.
    samples = {"lr_boundaries": "3,6", "backbone": "mobilenet_v3_small", "weights": "none", "lr_schedule": "step",
               "optimizer": "sgd", "activation": "tanh", "batch_norm": True, "image_size": 32, "bn_momentum": 0.5,
               "input_scale": 1.0, "plateau_factor": 0.5, "one_cycle_pct": 0.3, "restart_t_mul": 2.0,
               "one_cycle_div": 10.0, "one_cycle_final_div": 100.0, "lr_min_factor": 0.1, "lr_decay_factor": 0.5,
               "lr_decay_rate": 0.5, "restart_m_mul": 0.5, "dropout": 0.25, "learning_rate": 0.01,
               "lr_power": 2.0, "momentum": 0.9, "weight_decay": 0.001}
    for model in ("mlp", "cnn", "transfer"):
        names = _registry.models.hparams_of(model)
        assert names is not None and TRAINING_HPARAMS <= names
        for name in sorted(names):
            assert parse_spec(_spec(model, **{name: samples.get(name, 2)})).hparams[name] == samples.get(name, 2)


@pytest.mark.parametrize("model, own, other", [("mlp", "units", "filters"), ("cnn", "filters", "units"),
                                                ("transfer", "backbone", "depth")])
def test_an_hparam_of_another_built_in_model_is_refused(model: str, own: str, other: str) -> None:
    problems = _problems(_spec(model, **{other: 4}))

    assert list(problems) == [f"hparams.{other}"]
    assert own in problems[f"hparams.{other}"]


def test_a_misspelled_conditional_hparam_is_refused_and_a_correct_one_accepted() -> None:
    optimizer = {"type": "discrete", "values": ["adam", "sgd"]}
    momentum = {"type": "real_interval", "min": 0.5, "max": 0.9, "when": {"optimizer": "sgd"}}

    assert parse_spec(_spec(optimizer=optimizer, momentum=momentum)).hparams["momentum"].when == {"optimizer": ["sgd"]}
    problems = _problems(_spec(optimizer=optimizer, momentun=momentum))
    assert list(problems) == ["hparams.momentun"] and "did you mean momentum?" in problems["hparams.momentun"]


@pytest.mark.parametrize("domain", [{"type": "discrete", "values": [1, 2]}, {"type": "real_interval", "min": 0, "max": 1},
                                    {"type": "int_interval", "min": 1, "max": 3}, {"type": "fixed", "value": "x"}, 7])
def test_an_unknown_hparam_is_refused_whatever_its_domain(domain: Any) -> None:
    assert list(_problems(_spec(units=8, nonsense=domain))) == ["hparams.nonsense"]


def test_the_hparams_the_trainer_reads_are_accepted_for_every_built_in_model() -> None:
    for model in ("mlp", "cnn", "transfer"):
        spec = parse_spec(_spec(model, optimizer={"type": "discrete", "values": ["adam", "sgd"]},
                                learning_rate={"type": "real_interval", "min": 1e-4, "max": 1e-1, "log": True},
                                lr_schedule="cosine", warmup_epochs=1, batch_size=16, seed=3, weight_decay=1e-4))
        assert set(spec.hparams) == {"optimizer", "learning_rate", "lr_schedule", "warmup_epochs", "batch_size",
                                     "seed", "weight_decay"}
