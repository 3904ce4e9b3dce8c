"""Operator plugins: models and datasets added by name, from installed entry points or `--plugins` modules.

Two ways in, both chosen by whoever installs or starts sweeper, never by a request:

- entry points in the groups `sweeper.models` and `sweeper.datasets` of an installed package: the name
  is the registered name, the value a 'module:attribute' reference, registered as text and imported
  only when a trial first builds with it (on a worker);
- modules named with `--plugins` (or SWEEPER_PLUGINS) on `sweeper serve`, `worker`, `run` and `submit`:
  imported at start-up, they call `register_model` / `register_dataset`.

A model function takes (hparams, DatasetInfo) and returns a Keras model; a dataset function takes no
arguments and returns a `Dataset` or `DataSplits` (see `sweeper.training.datasets`). Names follow
`sweeper._registry.NAME_PATTERN` and may not replace built-ins. See docs/plugins.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

from sweeper import _registry
from sweeper._registry import Builder, HParamsCheck, PluginError

__all__ = ["ENV_VAR", "PluginError", "load_entry_points", "load_plugins", "parse_plugin_modules",
           "register_dataset", "register_model"]

ENV_VAR = "SWEEPER_PLUGINS"
"""Plugin modules for the commands, comma- or space-separated, when --plugins is not given."""


def register_model(name: str, builder: Builder, *, check: str | HParamsCheck | None = None,
                   hparams: Iterable[str] | None = None) -> None:
    """Register model `name`: `builder(hparams, info)` returns an uncompiled Keras classifier.

    `builder` is a callable or a 'module:attribute' reference, imported when a trial first uses it (so
    a server that only validates specs never imports it). `check`, if given, is a TensorFlow-free
    function from the search space (hparam name -> domain) to problems [((field path), rule), ...],
    run when a sweep is submitted. `hparams`, if given, names the hparams the builder reads: a spec
    naming any other (besides those the trainer reads for every model, like learning_rate) is then
    refused, so a misspelled one cannot go unnoticed; without it, every name is accepted. Raises
    PluginError for a bad name, a built-in's name, a name already registered as other code, or
    `hparams` that are not distinct hparam names.
    """
    _registry.models.register(name, builder, check, hparams)


def register_dataset(name: str, builder: Builder) -> None:
    """Register dataset `name`: `builder()` returns a `Dataset` or `DataSplits`. Rules as for models."""
    _registry.datasets.register(name, builder)


def load_entry_points() -> dict[str, list[str]]:
    """Register every installed entry point of the sweeper groups (as references); the names, by kind.

    The registries also do this by themselves on first use; calling it at start-up makes a broken
    package an error there, and finds packages installed since.
    """
    return {"models": _registry.models.load_entry_points(), "datasets": _registry.datasets.load_entry_points()}


def parse_plugin_modules(values: Iterable[str] | str | None) -> list[str]:
    """Module names from --plugins values (repeated, comma- or space-separated), in order, without repeats."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    modules: list[str] = []
    for value in values:
        for module in value.replace(",", " ").split():
            if not all(part.isidentifier() for part in module.split(".")):
                raise PluginError(f"plugin {module!r} is not a module name like package.module; put the module's "
                                  f"folder on PYTHONPATH (or install it) and name the module, not a file")
            if module not in modules:
                modules.append(module)
    return modules


def load_plugins(values: Iterable[str] | str | None = None) -> list[str]:
    """Load entry points, then import each plugin module (None: read SWEEPER_PLUGINS); the module names.

    Raises PluginError naming the module when one cannot be imported or breaks a registration rule.
    """
    if values is None:
        values = os.environ.get(ENV_VAR, "")
    modules = parse_plugin_modules(values)
    load_entry_points()
    for module in modules:
        try:
            importlib.import_module(module)
        except PluginError as error:
            raise PluginError(f"plugin module {module!r}: {error}") from error
        except Exception as error:  # anything the module raises: the operator must see which module it was
            raise PluginError(f"cannot import plugin module {module!r}: {type(error).__name__}: {error} "
                              f"(is its folder on PYTHONPATH, or the package installed, for every command and "
                              f"worker?)") from error
    return modules
