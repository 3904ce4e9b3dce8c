"""Search strategies: which configuration trial k of a sweep gets.

A strategy is a pure function of the spec and the trial index, so it keeps no state: the server
stores only how many trials it has handed out, and after a restart the sweep goes on with the next
index, none skipped or repeated. Strategies never train; the runner never chooses.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from typing import Any, Protocol

from sweeper._conditions import active_config, holds, parents
from sweeper._domains import Discrete, Fixed, SearchDomain
from sweeper._spec import SweepSpec

Config = dict[str, Any]


class Strategy(Protocol):
    total: int
    """How many trials the sweep runs in all."""
    size: int | None
    """How many distinct configurations the strategy draws from; None when they are endless."""

    def config_at(self, index: int) -> Config:
        """The hparams of trial `index`, for 0 <= index < total."""
        ...


class ConditionalGrid:
    """Every distinct configuration of listed values, enumerated lazily, conditions honoured.

    Each hparam contributes its `grid(points)` values. Without conditions this is the plain product,
    last hparam fastest, like the nested loops of TensorBoard's tutorial. With conditions, the hparams
    that conditions name ("parents", discrete by rule) are enumerated first; each distinct choice of the
    active parents is a branch, whose size is the product over the hparams active in it. Trial k finds
    its branch among prefix sums, so nothing but the branches is ever materialised.
    """

    def __init__(self, space: dict[str, SearchDomain], points: int):
        self.space = space
        self.choices = {name: domain.grid(points) for name, domain in space.items()}
        parent_names = parents(space)  # the spec allows at most MAX_BRANCHES combinations of their values
        branches: dict[tuple[tuple[str, Any], ...], list[str]] = {}
        for values in itertools.product(*(self.choices[name] for name in parent_names)):
            chosen = active_config(space, dict(zip(parent_names, values)))
            # Parents that are inactive in this branch drop out, so branches that differ only in them coincide.
            key = tuple((name, chosen[name]) for name in parent_names if name in chosen)
            if key not in branches:
                branches[key] = [name for name in space if name not in parent_names and holds(space[name], chosen)]
        self.branches = list(branches.items())
        self.starts: list[int] = []
        self.size = 0
        for _, free in self.branches:
            self.starts.append(self.size)
            self.size += math.prod(len(self.choices[name]) for name in free)

    def config_at(self, index: int) -> Config:
        _check_index(index, self.size)
        branch = bisect.bisect_right(self.starts, index) - 1
        fixed, free = self.branches[branch]
        index -= self.starts[branch]
        config: Config = dict(fixed)
        for name in reversed(free):  # mixed-radix decoding, last hparam fastest
            index, digit = divmod(index, len(self.choices[name]))
            config[name] = self.choices[name][digit]
        return {name: config[name] for name in self.space if name in config}


class GridStrategy:
    """Every combination of discrete values and `grid_points` evenly spaced interval points."""

    def __init__(self, spec: SweepSpec):
        self.grid = ConditionalGrid(spec.search_space(), spec.search.grid_points)
        self.size: int | None = self.grid.size
        limit = spec.search.max_trials
        self.total = self.grid.size if limit is None else min(self.grid.size, limit)

    def config_at(self, index: int) -> Config:
        _check_index(index, self.total)
        return self.grid.config_at(index)


class RandomStrategy:
    """Seeded random sampling; trial k's configuration depends only on the seed and k.

    In a space of listed values only it walks a seeded permutation of all configurations, so none
    repeats until the space is exhausted. Otherwise each trial draws one number per hparam, from its
    own generator seeded by (seed, k), and conditions drop the hparams they switch off.
    """

    def __init__(self, spec: SweepSpec):
        self.space = spec.search_space()
        self.seed = spec.search.seed
        # Only a space of listed values is walked as a permutation; intervals are sampled, honouring log.
        listed = all(isinstance(domain, (Discrete, Fixed)) for domain in self.space.values())
        self.size = None
        limit = spec.search.max_trials
        if listed:
            self.grid = ConditionalGrid(self.space, points=2)
            self.size = self.grid.size
            self.total = self.size if limit is None else min(self.size, limit)
            self.permutation = _Permutation(self.size, self.seed)
        else:
            assert limit is not None, "the spec guarantees max_trials for continuous spaces"
            self.total = limit

    def config_at(self, index: int) -> Config:
        _check_index(index, self.total)
        if self.size is not None:
            return self.grid.config_at(self.permutation(index))
        rng = random.Random(f"sweeper:{self.seed}:{index}")
        return active_config(self.space, {name: domain.from_unit(rng.random()) for name, domain in self.space.items()})


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


class AdaptiveStrategy:
    """A strategy whose trial k depends on the results of trials 0..k-1: the server's sampler proposes it at
    claim time (api.search), so it is not a function of the index alone. Here: how many trials it runs.

    In a space of listed values it runs at most as many trials as there are configurations, none repeated.
    """

    def __init__(self, spec: SweepSpec):
        assert spec.search.max_trials is not None, "the spec requires max_trials for adaptive search"
        space = spec.search_space()
        listed = all(isinstance(domain, (Discrete, Fixed)) for domain in space.values())
        self.size: int | None = ConditionalGrid(space, points=2).size if listed else None
        self.total = spec.search.max_trials if self.size is None else min(self.size, spec.search.max_trials)
        self.strategy = spec.search.strategy

    def config_at(self, index: int) -> Config:
        raise NotImplementedError(f"{self.strategy} search proposes each trial from the results so far, "
                                  "at claim time on the server (api.search), not from its index")


class PopulationStrategy:
    """Population Based Training: its trials are the population's members, and member k's first hparams are
    seeded random draws (one generator per member, seeded by (seed, k)), as random search draws them. What
    each member trains with later is decided by the server at its reports (exploit and explore)."""

    def __init__(self, spec: SweepSpec):
        assert spec.search.population is not None, "the spec requires population for pbt"
        self.space = spec.search_space()
        self.seed = spec.search.seed
        self.total = spec.search.population
        self.size: int | None = None

    def config_at(self, index: int) -> Config:
        _check_index(index, self.total)
        rng = random.Random(f"sweeper:pbt:{self.seed}:{index}")
        return active_config(self.space, {name: domain.from_unit(rng.random()) for name, domain in self.space.items()})


def make_strategy(spec: SweepSpec) -> Strategy:
    if spec.search.adaptive:
        return AdaptiveStrategy(spec)
    return {"grid": GridStrategy, "random": RandomStrategy,
            "pbt": PopulationStrategy}[spec.search.strategy](spec)
