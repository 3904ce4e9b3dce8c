"""Registries of model and dataset names.

A sweep names its model and dataset; only names registered here resolve to code. Nothing in a request is
ever imported: entries point at code chosen by whoever installed or started sweeper (the built-ins below,
installed packages' entry points, `--plugins` modules), and are imported lazily so that `import sweeper`
stays free of TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from sweeper._errors import SweeperError

Builder = str | Callable[..., Any]
"""A callable, or a 'module:attribute' reference imported on first use."""
Problem = tuple[tuple[str | int, ...], str]
"""(field path, broken rule), as `SpecError` reports them."""
HParamsCheck = Callable[[Mapping[str, Any]], list[Problem]]
"""A model's spec-time check: the search space (hparam name -> domain) in, problems out; no TensorFlow."""
HParamNames = str | Iterable[str]
"""A model's declared hparams: names, or a 'module:attribute' reference to them imported on first use."""
HPARAM_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
"""What an hparam may be called (in a spec, or declared by a model)."""

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
"""What a plugin may register: identifier-like, so a name can never read as a module, a path or a file
dataset (no '.', ':' or '/')."""
_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PluginError(SweeperError, ValueError):
    """A plugin broke a registration rule (a bad or clashing name), or its module cannot be imported."""


class Registry:
    """Name -> builder, where a builder is a callable or a 'module:attribute' reference.

    The entries given to the constructor are the built-ins: `register` (the plugins' way in) cannot
    replace them. With an `entry_point_group`, installed packages' entry points in that group are added
    on first use, as references: their code is imported only when a trial builds with them.
    """

    def __init__(self, kind: str, entries: dict[str, Builder] | None = None, *,
                 entry_point_group: str | None = None, checks: dict[str, str | HParamsCheck] | None = None,
                 hparams: dict[str, HParamNames] | None = None):
        self.kind = kind
        self._entries: dict[str, Builder] = dict(entries or {})
        self._builtins = frozenset(self._entries)
        self._checks: dict[str, str | HParamsCheck] = dict(checks or {})
        self._hparams: dict[str, HParamNames] = dict(hparams or {})
        self.entry_point_group = entry_point_group
        self._scanned = entry_point_group is None

    def register(self, name: str, builder: Builder, check: str | HParamsCheck | None = None,
                 hparams: Iterable[str] | None = None) -> None:
        """Add `name`; raises PluginError when the name breaks the rules or is taken by other code.

        Registering the same code again (the same object or reference) is allowed, so a plugin that is
        both installed with entry points and named with --plugins does not clash with itself.
        `hparams`, when given, are the names the entry reads besides the trainer's (see `hparams_of`).
        """
        problem = self._name_problem(name) or _builder_problem(builder) \
            or (None if check is None else _builder_problem(check, "check")) \
            or (None if hparams is None else _hparams_problem(hparams))
        if problem is not None:
            raise PluginError(f"cannot register {self.kind} {name!r}: {problem}")
        existing = self._entries.get(name)
        if existing is not None and _reference(existing) != _reference(builder):
            raise PluginError(f"cannot register {self.kind} {name!r} as {_reference(builder)}: the name is already "
                              f"registered as {_reference(existing)}; choose another name")
        self._entries[name] = builder
        if check is not None:
            self._checks[name] = check
        if hparams is not None:
            self._hparams[name] = frozenset(hparams)

    def _name_problem(self, name: object) -> str | None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            return ("a name must start with a letter and have only letters, digits, '_' and '-' (at most 100 "
                    "characters)")
        if name in self._builtins:
            return f"{name!r} is a built-in {self.kind}; built-ins are: {', '.join(sorted(self._builtins))}"
        return None

    def load_entry_points(self) -> list[str]:
        """Register this registry's entry points (again: new distributions are found); their names.

        Every entry is checked before any is registered, so a broken package registers nothing.
        """
        if self.entry_point_group is None:
            return []
        found: dict[str, tuple[str, str]] = {}
        problems: list[str] = []
        for entry in importlib.metadata.entry_points(group=self.entry_point_group):
            origin = f"entry point {entry.name!r} of {_distribution(entry)} (group {self.entry_point_group})"
            reference = f"{entry.module}:{entry.attr}" if entry.attr else entry.value
            problem = self._name_problem(entry.name) or _builder_problem(reference)
            if problem is None and entry.name in found and found[entry.name][0] != reference:
                problem = f"{found[entry.name][1]} registers the same name as {found[entry.name][0]}"
            existing = self._entries.get(entry.name)
            if problem is None and existing is not None and _reference(existing) != reference:
                problem = f"the name is already registered as {_reference(existing)}"
            if problem is not None:
                problems.append(f"{origin}: {problem}")
            found.setdefault(entry.name, (reference, origin))
        if problems:
            raise PluginError("; ".join(problems))
        for name, (reference, _) in found.items():
            self._entries.setdefault(name, reference)
        self._scanned = True
        return sorted(found)

    def _all(self) -> dict[str, Builder]:
        if not self._scanned:
            self.load_entry_points()
        return self._entries

    def names(self) -> list[str]:
        return sorted(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def explain(self, name: str) -> str | None:
        """Why `name` names nothing here (a message naming the rule), or None when it is usable."""
        if name in self._all():
            return None
        return f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}"

    def get(self, name: str) -> Callable[..., Any]:
        return _load(self._all(), name, self.kind)

    def check_hparams(self, name: str, space: Mapping[str, Any]) -> list[Problem]:
        """Spec-time problems with `space` (hparam name -> domain) for the entry `name`; [] without a check.

        Runs where TensorFlow is never loaded (the server, `sweeper submit`), so checks import none.
        """
        if name not in self._checks:
            return []
        return list(_load(self._checks, name, f"{self.kind} check")(space))

    def hparams_of(self, name: str) -> frozenset[str] | None:
        """Every hparam a trial of model `name` reads (its declared ones and the trainer's), or None when
        the model declared none: then any hparam is accepted."""
        if name not in self._hparams:
            return None
        from sweeper._model_hparams import accepted  # it imports the transfer model's table, which imports this

        return accepted(_load(self._hparams, name, f"{self.kind} hparams"))


class DatasetRegistry(Registry):
    """Dataset names: registered built-ins, plus file datasets named `<format>:<relative path>`.

    A file dataset's name is only a path under the operator's data root, checked here without touching
    the disk (so a spec is rejected at submit time), and again against the real files when loaded.
    A format's loader takes the resolved path and returns a Dataset.
    """

    def __init__(self, entries: dict[str, Builder] | None = None, formats: dict[str, Builder] | None = None, *,
                 entry_point_group: str | None = None):
        super().__init__("dataset", entries, entry_point_group=entry_point_group)
        self._formats: dict[str, Builder] = dict(formats or {})

    def register_format(self, prefix: str, loader: Builder) -> None:
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
        if name in self._all() or not colon or prefix not in self._formats:
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


def _load(entries: dict[str, Any], name: str, kind: str) -> Any:
    """What is registered as `name` (a callable, or a model's hparam names), importing a 'module:attribute'
    reference on first use."""
    try:
        entry = entries[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(entries))}") from None
    if isinstance(entry, str):
        entry = entries[name] = _resolve(entry)
    return entry


def _builder_problem(builder: object, what: str = "builder") -> str | None:
    if isinstance(builder, str):
        if not _REFERENCE.match(builder):
            return f"a {what} given as text must be a 'package.module:attribute' reference, but got {builder!r}"
        return None
    return None if callable(builder) else f"a {what} must be callable or a 'module:attribute' reference"


def _hparams_problem(hparams: object) -> str | None:
    if isinstance(hparams, str) or not isinstance(hparams, Iterable):
        return f"hparams must be a list of hparam names, but got {hparams!r}"
    names = list(hparams)
    bad = [name for name in names if not isinstance(name, str) or not HPARAM_NAME_PATTERN.match(name)]
    if bad:
        return f"hparams must be names like units or learning_rate, but got {bad[0]!r}"
    if len(set(names)) != len(names):
        return f"hparams must be distinct names, but got {', '.join(names)}"
    return None


def _reference(builder: Builder) -> str:
    """'module:attribute' for a reference or a named callable: equal references name the same code."""
    if isinstance(builder, str):
        return builder
    module, qualname = getattr(builder, "__module__", None), getattr(builder, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname and "<" not in qualname else repr(builder)


def _distribution(entry: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"package {dist.name!r}" if dist is not None and getattr(dist, "name", None) else "an installed package"


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
    target: Any = importlib.import_module(module_name)
    # An entry point's attribute may be dotted (Class.method), as importlib.metadata allows.
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


MODEL_ENTRY_POINTS = "sweeper.models"
DATASET_ENTRY_POINTS = "sweeper.datasets"

models = Registry(
    "model",
    {
        "mlp": "sweeper.training.models:build_mlp",
        "cnn": "sweeper.training.models:build_cnn",
        "transfer": "sweeper.training.transfer:build_transfer",
    },
    entry_point_group=MODEL_ENTRY_POINTS,
    checks={"transfer": "sweeper._transfer_params:check_transfer_hparams"},
    hparams={"mlp": "sweeper._model_hparams:MLP", "cnn": "sweeper._model_hparams:CNN",
             "transfer": "sweeper._model_hparams:TRANSFER"},
)
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
    entry_point_group=DATASET_ENTRY_POINTS,
)
