"""LR schedules equal their closed-form formulas; optimizers are chosen by name."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest

from sweeper._schedule_params import SCHEDULES
from sweeper.training.schedules import (OneCycle, build_learning_rate, build_optimizer, known_schedules,
                                        schedule_callbacks)

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


# --- The full set of schedules, each against a reference formula written out here. ---

BASE = 0.1


def _build(schedule: str, **hparams: Any) -> Any:
    return build_learning_rate({"lr_schedule": schedule, "learning_rate": BASE, **hparams}, EPOCHS, STEPS_PER_EPOCH)


def test_known_schedules_are_the_ones_the_spec_checks() -> None:
    assert known_schedules() == list(SCHEDULES) == [
        "constant", "step", "exponential", "cosine", "cosine_restarts", "polynomial", "one_cycle",
        "reduce_on_plateau"]


@pytest.mark.parametrize("name", [name for name in SCHEDULES if name != "step"])
def test_every_schedule_builds_with_its_defaults(name: str) -> None:
    assert build_learning_rate({"lr_schedule": name}, EPOCHS, STEPS_PER_EPOCH) is not None


def test_unknown_schedule_message_lists_every_known_schedule() -> None:
    with pytest.raises(ValueError, match="known schedules: " + ", ".join(SCHEDULES) + "$"):
        build_learning_rate({"lr_schedule": "cyclic"}, EPOCHS, STEPS_PER_EPOCH)


@pytest.mark.parametrize("step", STEPS)
def test_step_drops_at_the_start_of_each_listed_boundary_epoch(step: int) -> None:
    schedule = _build("step", lr_boundaries="2,5", lr_decay_factor=0.5)

    epoch = step // STEPS_PER_EPOCH
    drops = sum(epoch >= boundary for boundary in (2, 5))
    assert _lr(schedule, step) == pytest.approx(BASE * 0.5**drops, rel=1e-6)


@pytest.mark.parametrize("step", STEPS + [5, 15, 25])
def test_cosine_warms_up_linearly_from_zero_then_decays_over_the_rest(step: int) -> None:
    schedule = _build("cosine", warmup_epochs=2, lr_min_factor=0.1)

    warmup, decay = 2 * STEPS_PER_EPOCH, (EPOCHS - 2) * STEPS_PER_EPOCH
    if step < warmup:
        expected = BASE * step / warmup
    else:
        done = min(step - warmup, decay) / decay
        expected = BASE * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
    assert _lr(schedule, step) == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_cosine_warmup_must_leave_epochs_to_decay() -> None:
    with pytest.raises(ValueError, match="warmup_epochs must be < epochs"):
        _build("cosine", warmup_epochs=EPOCHS)


def _restarts_reference(step: int, period: int, t_mul: float, m_mul: float, alpha: float) -> float:
    start, restart = 0, 0
    while step >= start + period:
        start, period, restart = start + period, int(period * t_mul), restart + 1
    cosine = 0.5 * m_mul**restart * (1 + math.cos(math.pi * (step - start) / period))
    return BASE * ((1 - alpha) * cosine + alpha)


@pytest.mark.parametrize(("t_mul", "steps"), [
    (1.0, [0, 5, 9, 10, 15, 20, 29, 30, 44, 59]),
    # Periods 10, 20, 40 from steps 0, 10, 30. Keras finds the restart with a float32 log, so exact
    # restart steps are left out where the period grows.
    (2.0, [0, 5, 9, 11, 20, 29, 31, 50, 69, 71]),
])
def test_cosine_restarts_restart_with_longer_periods_and_lower_peaks(t_mul: float, steps: list[int]) -> None:
    schedule = _build("cosine_restarts", restart_epochs=1, restart_t_mul=t_mul, restart_m_mul=0.5, lr_min_factor=0.1)

    expected = [_restarts_reference(step, STEPS_PER_EPOCH, t_mul, 0.5, 0.1) for step in steps]
    assert [_lr(schedule, step) for step in steps] == pytest.approx(expected, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("step", STEPS + [100])
def test_polynomial_decays_by_the_power_to_the_min_factor(step: int) -> None:
    schedule = _build("polynomial", lr_power=2.0, lr_min_factor=0.1)

    end = 0.1 * BASE
    assert _lr(schedule, step) == pytest.approx((BASE - end) * (1 - min(step, TOTAL_STEPS) / TOTAL_STEPS) ** 2 + end,
                                                rel=1e-5)


def _one_cycle_reference(step: int, pct: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    start, final = BASE / div, BASE / div / final_div
    peak_at = pct * TOTAL_STEPS
    if step < peak_at:
        return start + (BASE - start) * (1 - math.cos(math.pi * step / peak_at)) / 2
    done = min(1.0, (step - peak_at) / (TOTAL_STEPS - peak_at))
    return final + (BASE - final) * (1 + math.cos(math.pi * done)) / 2


@pytest.mark.parametrize("step", [0, 1, 6, 9, 17, 18, 19, 30, 39, 50, 59])
def test_one_cycle_rises_then_falls_by_cosine(step: int) -> None:
    schedule = _build("one_cycle")

    # float32 cosine near its minimum: only an absolute tolerance is meaningful at the low end.
    assert _lr(schedule, step) == pytest.approx(_one_cycle_reference(step), rel=1e-5, abs=1e-7)


def test_one_cycle_starts_at_base_over_div_peaks_at_base_and_ends_at_base_over_div_times_final_div() -> None:
    schedule = _build("one_cycle", one_cycle_pct=0.5, one_cycle_div=10.0, one_cycle_final_div=100.0)

    assert [_lr(schedule, step) for step in (0, TOTAL_STEPS // 2, TOTAL_STEPS, 2 * TOTAL_STEPS)] == pytest.approx(
        [BASE / 10, BASE, BASE / 1000, BASE / 1000], rel=1e-5)


def test_one_cycle_survives_keras_serialization() -> None:
    schedule = _build("one_cycle", one_cycle_pct=0.25)

    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))

    assert isinstance(restored, OneCycle)
    assert restored.get_config() == schedule.get_config()
    assert [_lr(restored, step) for step in STEPS] == pytest.approx([_lr(schedule, step) for step in STEPS])


@pytest.mark.parametrize(("hparams", "rule"), [
    ({"lr_schedule": "step", "lr_decay_factor": 1.5}, r"lr_decay_factor must be in \(0, 1\], but got 1.5"),
    ({"lr_schedule": "cosine", "warmup_epochs": -1}, "warmup_epochs must be an integer >= 0"),
    ({"lr_schedule": "one_cycle", "one_cycle_pct": 1.0}, r"one_cycle_pct must be in \(0, 1\)"),
    ({"lr_schedule": "step", "lr_boundaries": "4,2"}, "lr_boundaries must list increasing epochs"),
])
def test_out_of_range_schedule_hparams_are_rejected_naming_the_range(hparams: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        build_learning_rate(hparams, EPOCHS, STEPS_PER_EPOCH)


def test_only_reduce_on_plateau_needs_a_callback() -> None:
    assert all(schedule_callbacks({"lr_schedule": name}) == [] for name in SCHEDULES if name != "reduce_on_plateau")

    [callback] = schedule_callbacks({"lr_schedule": "reduce_on_plateau", "learning_rate": BASE,
                                     "plateau_factor": 0.5, "plateau_patience": 3, "lr_min_factor": 0.01})

    assert isinstance(callback, keras.callbacks.ReduceLROnPlateau)
    assert (callback.monitor, callback.factor, callback.patience) == ("val_loss", 0.5, 3)
    assert callback.min_lr == pytest.approx(BASE * 0.01)


def test_reduce_on_plateau_drops_the_rate_by_the_factor_after_patience_epochs_without_improvement() -> None:
    hparams = {"lr_schedule": "reduce_on_plateau", "learning_rate": BASE, "plateau_factor": 0.5,
               "plateau_patience": 2, "lr_min_factor": 0.4}
    # A frozen model: the weights never change, so val_loss is the same every epoch and never improves.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.trainable = False
    learning_rate = build_learning_rate(hparams, EPOCHS, 1)
    model.compile(optimizer=build_optimizer({"optimizer": "sgd"}, learning_rate), loss="sparse_categorical_crossentropy")
    rates: list[float] = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: rates.append(float(model.optimizer.learning_rate)))
    x, y = np.ones((4, 2), dtype="float32"), np.zeros(4, dtype="int32")

    model.fit(x, y, validation_data=(x, y), epochs=EPOCHS, verbose=0,
              callbacks=[*schedule_callbacks(hparams), record])

    # Epoch 0 sets the best; epochs 2 and 4 end two epochs without improvement. The second drop
    # stops at the floor, lr_min_factor times the base rate.
    assert rates == pytest.approx([BASE, BASE, BASE * 0.5, BASE * 0.5, BASE * 0.4, BASE * 0.4])
