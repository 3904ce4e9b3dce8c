"""Registries of model and dataset names.

A sweep names its model and dataset; only names registered here (by sweeper itself or, later, by the
operator) resolve to code. Nothing in a request is ever imported: entries point at code chosen by
whoever installed sweeper, and are imported lazily so that `import sweeper` stays free of TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath, PureWindowsPath
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

    def explain(self, name: str) -> str | None:
        """Why `name` names nothing here (a message naming the rule), or None when it is usable."""
        if name in self._entries:
            return None
        return f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"

    def get(self, name: str) -> Callable[..., Any]:
        return _load(self._entries, name, self.kind)


class DatasetRegistry(Registry):
    """Dataset names: registered built-ins, plus file datasets named `<format>:<relative path>`.

    A file dataset's name is only a path under the operator's data root, checked here without touching
    the disk (so a spec is rejected at submit time), and again against the real files when loaded.
    A format's loader takes the resolved path and returns a Dataset.
    """

    def __init__(self, entries: dict[str, str | Callable[..., Any]] | None = None,
                 formats: dict[str, str | Callable[..., Any]] | None = None):
        super().__init__("dataset", entries)
        self._formats: dict[str, str | Callable[..., Any]] = dict(formats or {})

    def register_format(self, prefix: str, loader: str | Callable[..., Any]) -> None:
        if not prefix.isidentifier():
            raise ValueError(f"a dataset format prefix must be an identifier, but got {prefix!r}")
        self._formats[prefix] = loader

    def formats(self) -> list[str]:
        return sorted(self._formats)

    def split_file_name(self, name: str) -> tuple[str, str] | None:
        """(format, relative path) when `name` starts with a registered format prefix, else None.

        Registered names win, so a built-in whose name happens to contain ':' is never read as a file.
        """
        prefix, colon, relative = name.partition(":")
        if name in self._entries or not colon or prefix not in self._formats:
            return None
        return prefix, relative

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.explain(name) is None

    def explain(self, name: str) -> str | None:
        split = self.split_file_name(name)
        if split is None:
            unknown = super().explain(name)
            files = " or ".join(f"{prefix}:<path>" for prefix in self.formats())
            return unknown if unknown is None or not files else f"{unknown}; or a file under the data root as {files}"
        problem = data_path_problem(split[1])
        return None if problem is None else f"dataset path {name!r} {problem}"

    def get_format(self, prefix: str) -> Callable[..., Any]:
        return _load(self._formats, prefix, "dataset format")


def _load(entries: dict[str, str | Callable[..., Any]], name: str, kind: str) -> Callable[..., Any]:
    """The callable registered as `name`, importing a 'module:attribute' reference on first use."""
    try:
        entry = entries[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(entries))}") from None
    if isinstance(entry, str):
        entry = entries[name] = _resolve(entry)
    return entry


def data_path_problem(relative: str) -> str | None:
    """The rule a data-root-relative path breaks, judged on its text alone; None when it is acceptable.

    Deliberately strict: a request names files, it never navigates. Symlinks are checked on load.
    """
    if not relative:
        return "is empty; name a file or folder under the data root"
    if any(ord(char) < 32 for char in relative) or "\\" in relative:
        return "must use '/' as its only separator and contain no control characters"
    # A Windows anchor (C:, //server) is refused too, so a spec means the same on every worker.
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
        return "must be relative to the data root, not absolute"
    if ".." in PurePosixPath(relative).parts:
        return "must stay inside the data root; '..' parts are not allowed"
    return None


def _resolve(reference: str) -> Callable[..., Any]:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


models = Registry("model", {
    "mlp": "sweeper.training.models:build_mlp",
    "cnn": "sweeper.training.models:build_cnn",
})
datasets = DatasetRegistry(
    {
        "digits": "sweeper.training.datasets:load_digits",
        "iris": "sweeper.training.datasets:load_iris",
        "wine": "sweeper.training.datasets:load_wine",
        "breast_cancer": "sweeper.training.datasets:load_breast_cancer",
    },
    formats={
        "npz": "sweeper.training.datasets:load_npz",
        "images": "sweeper.training.datasets:load_image_folder",
    },
)
