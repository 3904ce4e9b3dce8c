"""A plugin for bench/search.py: a model named `hartmann6` that reads the hparams x1..x6.

Nothing in that benchmark trains: its simulated workers compute each epoch's value from the hparams. The
server still checks every spec against the model's declared hparams, so the benchmark's six coordinates
need a model that declares them. Its builder is never called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sweeper

HPARAMS = [f"x{number}" for number in range(1, 7)]


def build(hparams: Mapping[str, Any], info: Any) -> Any:
    raise RuntimeError("the hartmann6 model is simulated by bench/search.py's workers; nothing builds it")


sweeper.register_model("hartmann6", build, hparams=HPARAMS)
