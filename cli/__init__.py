"""The `sweeper` command line: the composition root above the core (sweeper), the server (api) and the workers.

It is the only package that imports all three. The server and the workers are imported inside the
commands that need them, so that `sweeper submit` on a laptop never loads FastAPI or TensorFlow.
"""

from cli._app import app
from cli._kubernetes import (RELEASE_MARGIN_SECONDS, KubernetesValues, ValuesError, load_values, render_manifests,
                             render_yaml)

__all__ = ["app", "KubernetesValues", "ValuesError", "load_values", "render_manifests", "render_yaml",
           "RELEASE_MARGIN_SECONDS"]
