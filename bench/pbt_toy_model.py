"""A plugin for bench/pbt.py: a model named `pbt_toy` that reads one hparam, learning_rate.

Nothing in that benchmark trains a network: its simulated members follow a toy whose best learning rate
changes during training. The server still checks every spec against the model's declared hparams, so the
benchmark needs a model that declares it. Its builder is never called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sweeper


def build(hparams: Mapping[str, Any], info: Any) -> Any:
    raise RuntimeError("the pbt_toy model is simulated by bench/pbt.py's workers; nothing builds it")


sweeper.register_model("pbt_toy", build, hparams=["learning_rate"])
