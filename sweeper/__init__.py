"""sweeper: hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.

This package is the core: importing it loads neither TensorFlow, FastAPI nor SQLAlchemy.
"""

from sweeper._domains import Discrete, Fixed, IntInterval, RealInterval
from sweeper._errors import (InfrastructureError, NonFiniteLossError, RetryableError, SpecError, SweeperError,
                             TrialAbandonedError, UnknownTrialError)
from sweeper._registry import PluginError, datasets, models
from sweeper._spec import Objective, SearchSettings, SweepSpec, TrainSettings, load_spec, parse_spec
from sweeper._strategies import GridStrategy, RandomStrategy, Strategy, make_strategy
from sweeper.plugins import register_dataset, register_model

__version__ = "0.1.0"

__all__ = [
    "Discrete", "Fixed", "IntInterval", "RealInterval",
    "InfrastructureError", "NonFiniteLossError", "RetryableError", "SpecError", "SweeperError", "PluginError",
    "TrialAbandonedError", "UnknownTrialError",
    "datasets", "models", "register_dataset", "register_model",
    "Objective", "SearchSettings", "SweepSpec", "TrainSettings", "load_spec", "parse_spec",
    "GridStrategy", "RandomStrategy", "Strategy", "make_strategy",
]
