"""sweeper: hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.

This package is the core: importing it loads neither TensorFlow, FastAPI nor SQLAlchemy.
"""

# File operations under a logdir, local or in an object store, exported as a namespace: their names
# (`isdir`, `remove`) read right only qualified, as `log_files.isdir(folder)`.
from sweeper import _log_files as log_files
from sweeper._conditions import active_config, evaluation_order, holds
from sweeper._domains import Discrete, Domain, Fixed, IntInterval, RealInterval, SearchDomain, value_key
from sweeper._errors import (InfrastructureError, NonFiniteLossError, RetryableError, SpecError, SweeperError,
                             TrialAbandonedError, UnknownTrialError)
from sweeper._registry import PluginError, datasets, models
from sweeper._spec import (Objective, SearchSettings, Stopping, SweepSpec, TrainSettings, load_spec, parse_spec,
                           read_spec_text, yaml_lines)
from sweeper._strategies import (AdaptiveStrategy, GridStrategy, PopulationStrategy, RandomStrategy, Strategy,
                                 make_strategy)
from sweeper.plugins import register_dataset, register_model

__version__ = "0.1.0"

__all__ = [
    "Discrete", "Domain", "Fixed", "IntInterval", "RealInterval", "SearchDomain", "value_key",
    "active_config", "evaluation_order", "holds",
    "InfrastructureError", "NonFiniteLossError", "RetryableError", "SpecError", "SweeperError", "PluginError",
    "TrialAbandonedError", "UnknownTrialError",
    "datasets", "models", "register_dataset", "register_model",
    "Objective", "SearchSettings", "Stopping", "SweepSpec", "TrainSettings", "load_spec", "parse_spec",
    "read_spec_text", "yaml_lines",
    "AdaptiveStrategy", "GridStrategy", "PopulationStrategy", "RandomStrategy", "Strategy", "make_strategy",
    "log_files",
]
