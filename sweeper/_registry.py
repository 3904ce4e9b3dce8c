"""Registries of model and dataset names.

A sweep names its model and dataset; only names registered here (by sweeper itself or, later, by the
operator) resolve to code. Nothing in a request is ever imported: entries point at code chosen by
whoever installed sweeper, and are imported lazily so that `import sweeper` stays free of TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """Name -> builder, where a builder is a callable or a 'module:attribute' reference."""

    def __init__(self, kind: str, entries: dict[str, str | Callable[..., Any]] | None = None):
        self.kind = kind
        self._entries: dict[str, str | Callable[..., Any]] = dict(entries or {})

    def register(self, name: str, builder: str | Callable[..., Any]) -> None:
        self._entries[name] = builder

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Callable[..., Any]:
        try:
            builder = self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None
        if isinstance(builder, str):
            module_name, _, attribute = builder.partition(":")
            builder = getattr(importlib.import_module(module_name), attribute)
            self._entries[name] = builder
        return builder


models = Registry("model", {
    "mlp": "sweeper.training.models:build_mlp",
    "cnn": "sweeper.training.models:build_cnn",
})
datasets = Registry("dataset", {
    "digits": "sweeper.training.datasets:load_digits",
})
