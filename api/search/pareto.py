"""Pareto ranks of a multi-objective sweep's trials: rank 0 is the front (no other trial is at least as good
in every objective and better in one), rank 1 the front once rank 0 is set aside, and so on.

Optuna computes the same inside its samplers, but not as public API; these few lines over NumPy are what the
API's `pareto_front` and TensorBoard's `pareto_rank` need.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


CHUNK = 1024
"""Points compared against all others at once: bounds the comparison's memory to CHUNK x n x objectives."""


def pareto_ranks(values: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Each point's front, from 0; `values[i][k]` is point i's value of objective k (finite).

    Peels one front at a time: each peel compares the remaining points pairwise, in chunks.
    """
    # As losses: lower is better in every column.
    losses = np.asarray(values, dtype=float).reshape(len(values), len(maximize))
    losses = losses * np.where(np.asarray(maximize), -1.0, 1.0)
    ranks = np.full(len(losses), -1)
    remaining = np.arange(len(losses))
    rank = 0
    while remaining.size:
        front = remaining[~_dominated(losses[remaining])]
        ranks[front] = rank
        remaining = np.setdiff1d(remaining, front, assume_unique=True)
        rank += 1
    return [int(rank) for rank in ranks]


def pareto_front(values: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """The positions of the points on the front (rank 0), in order."""
    if not values:
        return []
    losses = np.asarray(values, dtype=float).reshape(len(values), len(maximize))
    losses = losses * np.where(np.asarray(maximize), -1.0, 1.0)
    return [int(position) for position in np.flatnonzero(~_dominated(losses))]


def _dominated(losses: np.ndarray) -> np.ndarray:
    """For each point: does another point do at least as well in every objective and better in one?"""
    dominated = np.zeros(len(losses), dtype=bool)
    for start in range(0, len(losses), CHUNK):
        chunk = losses[start:start + CHUNK]
        no_worse = (losses[None, :, :] <= chunk[:, None, :]).all(axis=2)
        better = (losses[None, :, :] < chunk[:, None, :]).any(axis=2)
        dominated[start:start + CHUNK] = (no_worse & better).any(axis=1)
    return dominated
