"""Which hparams each built-in model reads, and the rule that refuses an hparam its model never reads.

A spec may only name hparams that something reads, so a misspelled name is refused at submit time
instead of leaving every trial at the model's default. The trainer reads its own hparams for every
model; a model declares the rest (built-ins below, plugins with `register_model(..., hparams=[...])`).
tests/sweeper/test_declared_hparams.py records what the builders and the runner actually read and
fails when it is not declared here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from sweeper._schedule_params import PARAMS as SCHEDULE_PARAMS
from sweeper._transfer_params import PARAMS as TRANSFER_PARAMS

Problem = tuple[tuple[str | int, ...], str]

TRAINING_HPARAMS = frozenset({
    "optimizer", "momentum", "weight_decay",  # sweeper.training.schedules.build_optimizer
    "lr_schedule", *SCHEDULE_PARAMS,           # build_learning_rate and schedule_callbacks; learning_rate included
    "batch_size", "seed",                      # the runner: per-trial overrides of train.batch_size and train.seed
})
"""Hparams the trainer reads whatever the model: every model accepts them."""

MLP = frozenset({"units", "depth", "dropout", "activation"})
CNN = frozenset({"filters", "kernel_size", "blocks", "dense_units", "dropout", "activation", "batch_norm"})
TRANSFER = frozenset({"backbone", "weights", *TRANSFER_PARAMS})
"""The built-in models' own hparams, as their builders in sweeper.training read them."""


def accepted(declared: Iterable[str]) -> frozenset[str]:
    """Every hparam a model with these declared hparams reads: its own and the trainer's."""
    return frozenset(declared) | TRAINING_HPARAMS


def unknown_hparams(model: str, names: Iterable[str], reads: frozenset[str]) -> list[Problem]:
    """A problem for each of `names` outside `reads`, suggesting the closest name it reads."""
    own = sorted(reads - TRAINING_HPARAMS)
    problems: list[Problem] = []
    for name in names:
        if name in reads:
            continue
        close = difflib.get_close_matches(name, sorted(reads), n=1)
        guess = f"; did you mean {close[0]}?" if close else "."
        problems.append((("hparams", name), f"model {model} reads no hparam {name!r}{guess} Its own hparams: "
                                            f"{', '.join(own) if own else 'none'}; and every model's: "
                                            f"{', '.join(sorted(TRAINING_HPARAMS))}"))
    return problems
