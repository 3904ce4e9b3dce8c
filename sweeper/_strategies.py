"""Search strategies: which configuration trial k of a sweep gets.

A strategy is a pure function of the spec and the trial index, so it keeps no state: the server
stores only how many trials it has handed out, and after a restart the sweep goes on with the next
index, none skipped or repeated. Strategies never train; the runner never chooses.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any, Protocol

from sweeper._domains import Discrete, Fixed, SearchDomain
from sweeper._spec import SweepSpec

Config = dict[str, Any]


class Strategy(Protocol):
    total: int
    """How many trials the sweep runs in all."""

    def config_at(self, index: int) -> Config:
        """The hparams of trial `index`, for 0 <= index < total."""
        ...


def _decode(space: dict[str, SearchDomain], choices: dict[str, list[Any]], index: int) -> Config:
    # Mixed-radix decoding, last hparam fastest, like the nested loops of TensorBoard's tutorial.
    config: Config = {}
    for name in reversed(list(space)):
        values = choices[name]
        index, digit = divmod(index, len(values))
        config[name] = values[digit]
    return {name: config[name] for name in space}


class GridStrategy:
    """Every combination of discrete values and `grid_points` evenly spaced interval points."""

    def __init__(self, spec: SweepSpec):
        self.space = spec.search_space()
        self.choices = {name: domain.grid(spec.search.grid_points) for name, domain in self.space.items()}
        self.size = math.prod(len(values) for values in self.choices.values())
        limit = spec.search.max_trials
        self.total = self.size if limit is None else min(self.size, limit)

    def config_at(self, index: int) -> Config:
        _check_index(index, self.total)
        return _decode(self.space, self.choices, index)


class RandomStrategy:
    """Seeded random sampling; trial k's configuration depends only on the seed and k.

    In a fully discrete space it walks a seeded permutation of all configurations, so none repeats
    until the space is exhausted.
    """

    def __init__(self, spec: SweepSpec):
        self.space = spec.search_space()
        self.seed = spec.search.seed
        # Only a space of listed values is walked as a permutation; intervals are sampled, honouring log.
        discrete = all(isinstance(domain, (Discrete, Fixed)) for domain in self.space.values())
        self.size: int | None = None
        if discrete:
            self.choices = {name: domain.grid(2) for name, domain in self.space.items()}
            self.size = math.prod(len(values) for values in self.choices.values())
        limit = spec.search.max_trials
        if self.size is None:
            assert limit is not None, "the spec guarantees max_trials for continuous spaces"
            self.total = limit
        else:
            self.total = self.size if limit is None else min(self.size, limit)
            self.permutation = _Permutation(self.size, self.seed)

    def config_at(self, index: int) -> Config:
        _check_index(index, self.total)
        if self.size is not None:
            return _decode(self.space, self.choices, self.permutation(index))
        rng = random.Random(f"sweeper:{self.seed}:{index}")
        return {name: domain.from_unit(rng.random()) for name, domain in self.space.items()}


class _Permutation:
    """A seeded bijection of range(n), computed per index (a Feistel network with cycle walking)."""

    rounds = 4

    def __init__(self, n: int, seed: int):
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = (1 << self.half) - 1
        self.keys = [f"{seed}:{r}".encode() for r in range(self.rounds)]

    def _round(self, key: bytes, value: int) -> int:
        digest = hashlib.blake2b(key + value.to_bytes(16, "little"), digest_size=8).digest()
        return int.from_bytes(digest, "little") & self.mask

    def _encrypt(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(key, right)
        return (left << self.half) | right

    def __call__(self, index: int) -> int:
        x = index
        while True:  # the cipher permutes [0, 4^half); walking the cycle lands back inside [0, n)
            x = self._encrypt(x)
            if x < self.n:
                return x


def _check_index(index: int, total: int) -> None:
    if not 0 <= index < total:
        raise IndexError(f"trial index must satisfy 0 <= index < {total}, but got {index}")


def make_strategy(spec: SweepSpec) -> Strategy:
    return {"grid": GridStrategy, "random": RandomStrategy}[spec.search.strategy](spec)
