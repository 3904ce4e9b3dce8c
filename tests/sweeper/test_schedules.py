"""LR schedules equal their closed-form formulas; optimizers are chosen by name."""

from __future__ import annotations

import math

import keras
import pytest

from sweeper.training.schedules import build_learning_rate, build_optimizer

EPOCHS = 6
STEPS_PER_EPOCH = 10
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
STEPS = [0, 1, 9, 10, 11, 19, 20, 21, 35, 59, 60]


def _lr(schedule: object, step: int) -> float:
    assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_constant_is_the_base_rate() -> None:
    assert build_learning_rate({"learning_rate": 0.05}, EPOCHS, STEPS_PER_EPOCH) == 0.05
    assert build_learning_rate({}, EPOCHS, STEPS_PER_EPOCH) == 1e-3


@pytest.mark.parametrize("step", STEPS)
def test_step_multiplies_by_the_factor_at_the_start_of_every_nth_epoch(step: int) -> None:
    hparams = {"lr_schedule": "step", "learning_rate": 0.1, "lr_decay_factor": 0.5, "lr_step_epochs": 2}
    schedule = build_learning_rate(hparams, EPOCHS, STEPS_PER_EPOCH)

    epoch = step // STEPS_PER_EPOCH
    assert _lr(schedule, step) == pytest.approx(0.1 * 0.5 ** (epoch // 2), rel=1e-6)


def test_step_defaults_to_a_tenth_every_third_of_training() -> None:
    schedule = build_learning_rate({"lr_schedule": "step", "learning_rate": 1.0}, 9, STEPS_PER_EPOCH)

    # epochs // 3 == 3: the rate drops at epochs 3 and 6.
    assert [_lr(schedule, epoch * STEPS_PER_EPOCH) for epoch in range(10)] == pytest.approx(
        [1.0] * 3 + [0.1] * 3 + [0.01] * 3 + [0.001], rel=1e-6)


def test_step_longer_than_training_never_decays() -> None:
    schedule = build_learning_rate({"lr_schedule": "step", "learning_rate": 0.1, "lr_step_epochs": 10},
                                   EPOCHS, STEPS_PER_EPOCH)

    assert [_lr(schedule, step) for step in STEPS] == pytest.approx([0.1] * len(STEPS), rel=1e-6)


@pytest.mark.parametrize("step", STEPS)
def test_exponential_decays_by_the_rate_per_epoch(step: int) -> None:
    hparams = {"lr_schedule": "exponential", "learning_rate": 0.1, "lr_decay_rate": 0.8}
    schedule = build_learning_rate(hparams, EPOCHS, STEPS_PER_EPOCH)

    assert _lr(schedule, step) == pytest.approx(0.1 * 0.8 ** (step / STEPS_PER_EPOCH), rel=1e-5)


def test_exponential_defaults_to_point_nine_per_epoch() -> None:
    schedule = build_learning_rate({"lr_schedule": "exponential"}, EPOCHS, STEPS_PER_EPOCH)

    assert _lr(schedule, 2 * STEPS_PER_EPOCH) == pytest.approx(1e-3 * 0.9**2, rel=1e-5)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine_decays_over_the_whole_run_to_the_min_factor(step: int, alpha: float) -> None:
    hparams = {"lr_schedule": "cosine", "learning_rate": 0.1, "lr_min_factor": alpha}
    schedule = build_learning_rate(hparams, EPOCHS, STEPS_PER_EPOCH)

    cosine = 0.5 * (1 + math.cos(math.pi * min(step, TOTAL_STEPS) / TOTAL_STEPS))
    # Keras computes in float32: near the end of the decay only an absolute tolerance is meaningful.
    assert _lr(schedule, step) == pytest.approx(0.1 * ((1 - alpha) * cosine + alpha), rel=1e-5, abs=1e-7)


def test_unknown_schedule_is_rejected_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown lr_schedule 'linear'.*constant, step, exponential, cosine"):
        build_learning_rate({"lr_schedule": "linear"}, EPOCHS, STEPS_PER_EPOCH)


def test_non_positive_learning_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        build_learning_rate({"learning_rate": 0.0}, EPOCHS, STEPS_PER_EPOCH)


@pytest.mark.parametrize(("name", "optimizer_class"), [
    ("adam", keras.optimizers.Adam), ("sgd", keras.optimizers.SGD), ("rmsprop", keras.optimizers.RMSprop),
    ("adamw", keras.optimizers.AdamW), ("nadam", keras.optimizers.Nadam),
])
def test_optimizer_is_chosen_by_name(name: str, optimizer_class: type) -> None:
    assert type(build_optimizer({"optimizer": name}, 0.01)) is optimizer_class


def test_optimizer_defaults_to_adam_with_the_given_schedule() -> None:
    schedule = build_learning_rate({"lr_schedule": "exponential"}, EPOCHS, STEPS_PER_EPOCH)

    optimizer = build_optimizer({}, schedule)

    assert isinstance(optimizer, keras.optimizers.Adam)
    # Before any step, the schedule is at its base rate.
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(1e-3)


def test_sgd_gets_the_momentum_hparam() -> None:
    assert build_optimizer({"optimizer": "sgd", "momentum": 0.9}, 0.01).momentum == 0.9


def test_momentum_is_ignored_by_optimizers_without_one() -> None:
    assert isinstance(build_optimizer({"optimizer": "adam", "momentum": 0.9}, 0.01), keras.optimizers.Adam)


def test_unknown_optimizer_is_rejected_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'adagrad'.*adam, sgd, rmsprop, adamw, nadam"):
        build_optimizer({"optimizer": "adagrad"}, 0.01)
