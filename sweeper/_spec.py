"""The sweep spec: what to train, what to search, and how to judge a trial.

Read from YAML or JSON (or a REST body) and validated into typed models. Every problem is reported
with its field path and the rule it broke, e.g. `hparams.dropout: min (0.5) must be < max (0.1)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, TypeAdapter, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from sweeper import _registry
from sweeper._conditions import check_conditions
from sweeper._domains import (MAX_HPARAMS, DiscreteValue, Domain, Fixed, IntInterval, RealInterval, SearchDomain,
                              _at_most)
from sweeper._errors import SpecError
from sweeper._model_hparams import unknown_hparams
from sweeper._schedule_params import check_schedule_hparams
from sweeper._text import Printable

FieldPath = tuple[str | int, ...]
Problem = tuple[FieldPath, str]

MAX_NAME_LENGTH = 200
"""The longest sweep name, model, dataset or metric name."""
MAX_HPARAM_NAME_LENGTH = 100
MAX_OBJECTIVES = 4
"""The most objectives a multi-objective sweep may have."""
MAX_CLASS_WEIGHTS = 10_000
"""The most classes `train.class_weight` may weigh."""

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), Printable]
HParamName = Annotated[str, Field(min_length=1, max_length=MAX_HPARAM_NAME_LENGTH,
                                  pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")]

_domain_adapter: TypeAdapter[Any] = TypeAdapter(Domain)
_fixed_adapter: TypeAdapter[Any] = TypeAdapter(DiscreteValue)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Strict):
    metric: Name
    """Any metric the trial logs per epoch: loss, val_loss, a `train.metrics` name or its val_ form, learning_rate."""
    goal: Literal["maximize", "minimize"] = "maximize"
    epoch: Literal["last", "best"] = "last"
    """Which epoch's value is the trial's objective: the last one trained, or the best by `goal`."""

    def better(self, a: float, b: float) -> bool:
        """True when objective value `a` beats `b`."""
        return a > b if self.goal == "maximize" else a < b


ADAPTIVE_STRATEGIES = ("tpe", "gp", "cmaes", "nsga2")
"""Strategies that propose each configuration from the results so far (Optuna's samplers, run by the server)."""


class SearchSettings(_Strict):
    strategy: Literal["grid", "random", "tpe", "gp", "cmaes", "nsga2", "pbt"] = "random"
    max_trials: PositiveInt | None = None
    seed: int = 0
    grid_points: int = Field(default=2, ge=2, le=1000)
    warm_start: Annotated[list[PositiveInt], Field(max_length=100)] | None = None
    """Earlier sweeps of the same space and objective whose finished trials the sampler starts from."""
    population: int | None = Field(default=None, ge=2, le=1000)
    """pbt: how many members train at once; each member is one trial."""
    interval_epochs: PositiveInt | None = None
    """pbt: a member is judged (exploit and explore) after every this many epochs."""
    mutable: Annotated[list[str], Field(max_length=100)] | None = None
    """pbt: the hparams that may change within a member's life."""
    max_epochs: PositiveInt | None = Field(default=None, le=100_000)
    """pbt: the epochs every member trains in all (the same as train.epochs)."""

    @property
    def adaptive(self) -> bool:
        """True when each configuration is proposed from the trials so far, at claim time."""
        return self.strategy in ADAPTIVE_STRATEGIES


class Stopping(_Strict):
    """Early stopping decided by the server at every epoch report: trials that will not win end pruned."""

    rule: Literal["asha", "hyperband", "median", "none"] = "none"
    min_epochs: int = Field(default=1, ge=1, le=100_000)
    """asha and hyperband: the first rung (epochs trained before the first comparison); median: the first
    epoch at which a trial may be stopped."""
    reduction_factor: int = 3
    """asha and hyperband: 1 in reduction_factor trials goes on at each rung."""

    @field_validator("reduction_factor")
    @classmethod
    def _halving(cls, factor: int) -> int:
        if not 2 <= factor <= 100:
            raise ValueError(f"must be >= 2 and <= 100, but got {factor}")
        return factor

    @property
    def active(self) -> bool:
        return self.rule != "none"


LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "categorical_focal_crossentropy",
          "kl_divergence", "poisson")
"""Keras losses that fit a softmax classifier over integer labels (categorical ones get one-hot labels)."""

METRICS = ("accuracy", "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy",
           "sparse_categorical_crossentropy", "auc", "precision", "recall")
"""Keras metrics a spec may ask for, by the name they are logged under (val_<name> for validation)."""


class EarlyStopping(_Strict):
    """Keras's EarlyStopping: stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    patience: int = Field(ge=0, le=100_000)
    monitor: Name = "val_loss"
    min_delta: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    restore_best_weights: bool = False


class TrainSettings(_Strict):
    epochs: PositiveInt = Field(default=10, le=100_000)
    batch_size: PositiveInt = 32
    validation_split: float = Field(default=0.2, gt=0.0, lt=1.0)
    loss: Literal[LOSSES] = "sparse_categorical_crossentropy"  # type: ignore[valid-type]
    metrics: list[Literal[METRICS]] = Field(default=["accuracy"], max_length=len(METRICS))  # type: ignore[valid-type]
    class_weight: dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] \
        | Literal["balanced"] | None = None
    """Per-class loss weights: a mapping {class index: weight}, or "balanced" (n / (k * count), as in scikit-learn)."""
    early_stopping: EarlyStopping | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    """Seeds Python, NumPy and TensorFlow: the same hparams and seed give the same metrics on CPU."""
    mixed_precision: bool = False
    """Train in float16 with float32 variables (Keras "mixed_float16"); worth it on GPUs with tensor cores."""
    jit_compile: bool = False
    """Compile the training step with XLA."""
    gpus_per_trial: int = Field(default=1, ge=1, le=64)
    """GPUs one trial trains on, with tf.distribute.MirroredStrategy when more than one; `batch_size` is per
    replica. Only workers with at least this many GPUs (`ClaimRequest.gpus`) are handed its trials."""

    @field_validator("class_weight", mode="before")
    @classmethod
    def _bounded_class_weight(cls, weights: Any) -> Any:
        # Before validation, so the message is this one rule rather than one per branch of the union.
        if isinstance(weights, dict) and len(weights) > MAX_CLASS_WEIGHTS:
            raise ValueError(f"at most {MAX_CLASS_WEIGHTS} classes, but got {len(weights)}")
        return weights

    @field_validator("metrics")
    @classmethod
    def _distinct_metrics(cls, metrics: list[str]) -> list[str]:
        if len(set(metrics)) != len(metrics):
            raise ValueError("metrics must not repeat")
        return metrics

    def metric_names(self) -> list[str]:
        """Every per-epoch value a trial reports under these settings: Keras's metrics as Keras names them,
        the learning rate, and num_params, the model's parameter count (the same every epoch)."""
        names = ["loss", *self.metrics]
        return [*names, *(f"val_{name}" for name in names), "learning_rate", "num_params"]


class SweepSpec(_Strict):
    name: Name
    model: Name
    dataset: Name
    objective: Objective
    """The objective; with several (`objective: [{metric: ..}, {metric: ..}]`), the first of them."""
    objectives: Annotated[list[Objective], Field(min_length=2, max_length=MAX_OBJECTIVES)] | None = None
    """Every objective of a multi-objective sweep, in the order written; None when there is one."""
    hparams: Annotated[dict[HParamName, Any], Field(min_length=1), _at_most(MAX_HPARAMS, "hparams")]
    search: SearchSettings = SearchSettings()
    stopping: Stopping | None = None
    train: TrainSettings = TrainSettings()
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Claims a trial gets: a lost worker's or a retryable failure's trial is retried until then."""
    max_failures: int = Field(default=5, ge=1, le=1_000_000)
    """Consecutive failed trials after which the sweep fails and starts no more."""

    @model_validator(mode="before")
    @classmethod
    def _objective_list(cls, data: Any) -> Any:
        # `objective` written as a list is the multi-objective form: stored as `objectives`, with `objective`
        # its first, so that everything that reads one objective (the runner, the page) reads the first.
        if isinstance(data, dict) and isinstance(data.get("objective"), list) and data["objective"]:
            listed = data["objective"]
            data = {**data, "objective": listed[0]}
            if len(listed) > 1:
                data["objectives"] = listed
        return data

    @model_validator(mode="before")
    @classmethod
    def _pbt_epochs(cls, data: Any) -> Any:
        # search.max_epochs is train.epochs by another name: given alone, it sets train.epochs, so that the runner,
        # the page and the stored spec read one number. Both given must agree (`_check_pbt`).
        if not isinstance(data, dict) or not isinstance(data.get("search"), dict):
            return data
        max_epochs = data["search"].get("max_epochs")
        train = data.get("train", {})
        if max_epochs is not None and isinstance(train, dict) and "epochs" not in train:
            data = {**data, "train": {**train, "epochs": max_epochs}}
        return data

    @model_validator(mode="after")
    def _across_fields(self, info: ValidationInfo) -> SweepSpec:
        # parse_spec checks these itself, with the field each names, once the fields they read are valid.
        if not (info.context or {}).get(_FIELDS_ONLY):
            problems = [*_check_objectives(self), *_check_random_search(self)]
            if problems:
                raise ValueError("; ".join(f"{'.'.join(map(str, path))}: {rule}" for path, rule in problems))
        return self

    @property
    def all_objectives(self) -> list[Objective]:
        """The sweep's objectives: one, or several for a multi-objective sweep."""
        return list(self.objectives) if self.objectives is not None else [self.objective]

    @field_validator("model")
    @classmethod
    def _registered_model(cls, name: str) -> str:
        if name not in _registry.models:
            raise ValueError(f"unknown model {name!r}; registered models: {', '.join(_registry.models.names())}")
        return name

    @field_validator("dataset")
    @classmethod
    def _registered_dataset(cls, name: str) -> str:
        # The registry knows built-in names and the rules for file paths under the data root.
        problem = _registry.datasets.explain(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    @field_validator("hparams", mode="after")
    @classmethod
    def _valid_domains(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        # Domains are validated here (not through a plain union) so that errors keep clean field paths.
        parsed: dict[str, Any] = {}
        for name, raw in hparams.items():
            parsed[name] = _domain_adapter.validate_python(raw) if isinstance(raw, dict) \
                else _fixed_adapter.validate_python(raw)
        return parsed

    @property
    def stops_early(self) -> bool:
        """True when a stopping rule judges every epoch report."""
        return self.stopping is not None and self.stopping.active

    def search_space(self) -> dict[str, SearchDomain]:
        """Every hparam as a domain; bare values become Fixed."""
        return {name: value if isinstance(value, BaseModel) else Fixed(value=value)
                for name, value in self.hparams.items()}

    def log_scaled(self) -> list[str]:
        """The hparams searched on a log scale; TensorBoard also shows them as `log10_<name>`."""
        return [name for name, domain in self.search_space().items()
                if isinstance(domain, (RealInterval, IntInterval)) and domain.log]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


_FIELDS_ONLY = "fields_only"
"""Validation context: check each field, leaving the rules across fields to `parse_spec`'s own checks."""
_FIELDS = {_FIELDS_ONLY: True}

_PLACEHOLDERS: dict[str, Any] = {"name": "draft", "model": "mlp", "dataset": "digits",
                                 "objective": {"metric": "loss"}, "hparams": {"_": 0}}
"""Valid stand-ins for required fields that are broken, so the rest of a draft can still be checked."""


def parse_spec(data: Any, source: str | None = None, *, stored: bool = False) -> SweepSpec:
    """Validate a parsed spec (a dict), raising SpecError with every problem and its field path.

    Every problem is found in one pass: the fields are validated, and the rules across fields (a metric
    the trial logs, hparams the model reads, what the search needs) are checked on what is valid. A
    rule that reads a broken field is skipped: it would only guess.

    `stored`: the spec of a sweep that exists, read again. Its hparams were accepted when the sweep was
    created, and a model's declaration that changed since must not strand the sweep, so they are not
    checked against the model's declaration again.
    """
    if not isinstance(data, dict):
        raise SpecError([((), f"a sweep spec must be a mapping, but got {type(data).__name__}")], source)
    problems = _domain_problems(data.get("hparams"))
    broken: set[FieldPath] = {path[:2] for path, _ in problems}
    try:
        spec: SweepSpec | None = SweepSpec.model_validate(data, context=_FIELDS)
    except ValidationError as error:
        problems += _field_problems(error, data, problems)
        spec = _draft(data, broken)
    if spec is not None:
        problems += _rules_across_fields(spec, data, frozenset(broken), stored)
    problems = _dedupe(problems)
    if problems or spec is None:
        raise SpecError(problems, source)
    return spec


def _domain_problems(hparams: Any) -> list[Problem]:
    """Each hparam validated on its own, to report its problems with a path like hparams.dropout.min."""
    problems: list[Problem] = []
    # Past the limit, the model reports the count alone: validating each of a million hparams would take long.
    if not isinstance(hparams, dict) or len(hparams) > MAX_HPARAMS:
        return problems
    for name, raw in hparams.items():
        if not isinstance(raw, dict):
            try:
                _fixed_adapter.validate_python(raw)
            except ValidationError as error:
                problems.append((("hparams", str(name)), f"a fixed value {_rule(error.errors()[0])}; a searched "
                                 "one is a mapping like {type: discrete, values: [...]}"))
            continue
        try:
            _domain_adapter.validate_python(raw)
        except ValidationError as error:
            problems += [(("hparams", str(name), *_inner_loc(e["loc"], raw)), _rule(e)) for e in error.errors()]
    return problems


def _field_problems(error: ValidationError, data: dict[str, Any], domains: list[Problem]) -> list[Problem]:
    problems: list[Problem] = []
    for e in error.errors():
        loc = tuple(e["loc"])
        # Problems inside a domain were reported above with the hparam's name in their path.
        if loc[:1] == ("hparams",) and "[key]" not in loc and domains:
            continue
        if isinstance(data.get("objective"), list) and data["objective"]:
            # Written as a list: each problem is named by its place in that list, once.
            if loc[:1] == ("objective",) and len(data["objective"]) > 1:
                continue
            if loc[:1] == ("objectives",):
                loc = ("objective", *loc[1:])
            elif loc[:1] == ("objective",):
                loc = ("objective", 0, *loc[1:])
        problems.append((loc, _rule(e)))
    return problems


def _draft(data: dict[str, Any], broken: set[FieldPath]) -> SweepSpec | None:
    """The spec with its broken parts left out (or, where required, stood in for); their paths join `broken`.

    None when no draft validates, which leaves only the fields' own problems to report.
    """
    draft = dict(data)
    if isinstance(draft.get("hparams"), dict):
        draft["hparams"] = {name: raw for name, raw in draft["hparams"].items() if ("hparams", str(name)) not in broken}
    for _ in range(len(_PLACEHOLDERS) + 4):  # each round repairs at least one field, or gives up
        try:
            return SweepSpec.model_validate(draft, context=_FIELDS)
        except ValidationError as error:
            for e in error.errors():
                if not _leave_out(draft, tuple(e["loc"]), broken):
                    return None
    return None


def _leave_out(draft: dict[str, Any], loc: FieldPath, broken: set[FieldPath]) -> bool:
    """Take the part at `loc` out of the draft (its section's field, or the whole field); False if it cannot."""
    if not loc:
        return False
    field = loc[0]
    if field in ("objective", "objectives"):
        draft.pop("objectives", None)
        draft["objective"] = _PLACEHOLDERS["objective"]
        broken.update({("objective",), ("objectives",)})
        return True
    section = draft.get(field)
    if len(loc) > 1 and isinstance(section, dict) and loc[1] in section:
        draft[field] = {key: value for key, value in section.items() if key != loc[1]}
        broken.add((field, loc[1]))
        return True
    if field in _PLACEHOLDERS:
        draft[field] = _PLACEHOLDERS[field]
    else:
        draft.pop(field, None)
    broken.add((field,))
    return True


def _usable(broken: frozenset[FieldPath], *needs: FieldPath) -> bool:
    """True when no broken part lies inside, or around, any of the parts a rule needs."""
    return not any(part[:len(need)] == need or need[:len(part)] == part for part in broken for need in needs)


def _rules_across_fields(spec: SweepSpec, data: dict[str, Any], broken: frozenset[FieldPath],
                         stored: bool = False) -> list[Problem]:
    """The rules that read several fields, each checked where the fields it reads are valid.

    The hparams' rules look at the valid hparams alone (a broken one is left out of `spec`), and only
    where each rule holds whatever the broken ones would be.
    """
    problems: list[Problem] = []
    space = spec.search_space() if ("hparams",) not in broken else {}
    problems += [problem for problem in check_conditions(space)
                 if not (len(problem[0]) == 4 and ("hparams", problem[0][3]) in broken)]
    problems += check_schedule_hparams(space)
    if _usable(broken, ("model",)):
        problems += _registry.models.check_hparams(spec.model, space)
        if not stored:
            problems += _check_hparam_names(spec.model, data.get("hparams"))
    if _usable(broken, ("objective",), ("train", "metrics"), ("train", "early_stopping")):
        problems += _check_metric_names(spec)
    if _usable(broken, ("objective",)):
        problems += _check_objectives(spec)
    if _usable(broken, ("search", "strategy"), ("search", "max_trials")):
        problems += _check_random_search(spec)
    problems += _check_search(spec, broken)
    problems += [(("hparams", f"log10_{name}"), f"clashes with the log10_{name} column that TensorBoard shows for "
                                              f"log-scaled {name}; rename it")
                 for name in spec.log_scaled() if f"log10_{name}" in space]
    return problems


def _check_hparam_names(model: str, hparams: Any) -> list[Problem]:
    """An hparam that the model does not read would silently do nothing: refused, when the model declares its own."""
    reads = _registry.models.hparams_of(model)
    if reads is None or not isinstance(hparams, dict) or len(hparams) > MAX_HPARAMS:
        return []
    # A name that is not an hparam name at all has its own problem already.
    names = [name for name in hparams if isinstance(name, str) and len(name) <= MAX_HPARAM_NAME_LENGTH
             and _registry.HPARAM_NAME_PATTERN.match(name)]
    return unknown_hparams(model, names, reads)


def _check_objectives(spec: SweepSpec) -> list[Problem]:
    if spec.objectives is None:
        return []
    if spec.objectives[0] != spec.objective:
        return [(("objective",), "must be the first of objectives (write objective as a list instead)")]
    metrics = [objective.metric for objective in spec.objectives]
    if len(set(metrics)) != len(metrics):
        return [(("objective",), f"each metric may be an objective once, but got {', '.join(metrics)}")]
    return []


def _check_random_search(spec: SweepSpec) -> list[Problem]:
    if spec.search.strategy == "random" and spec.search.max_trials is None:
        # Intervals are sampled, not enumerated, so nothing else would end the sweep.
        if any(isinstance(domain, (RealInterval, IntInterval)) for domain in spec.search_space().values()):
            return [(("search", "max_trials"), "is required for random search over intervals")]
    return []


def _check_metric_names(spec: SweepSpec) -> list[Problem]:
    # The objective and early stopping can only watch what the trial logs, known before any training.
    logged = spec.train.metric_names()
    watched: list[tuple[FieldPath, str]] = [(("objective", "metric"), spec.objective.metric)]
    if spec.objectives is not None:
        watched = [(("objective", position, "metric"), objective.metric)
                   for position, objective in enumerate(spec.objectives)]
    if spec.train.early_stopping is not None:
        watched.append((("train", "early_stopping", "monitor"), spec.train.early_stopping.monitor))
    problems: list[Problem] = []
    for path, name in watched:
        if name not in logged:
            problems.append((path, f"{name!r} is not a metric the trial logs; with train.metrics "
                                   f"{spec.train.metrics} it logs: {', '.join(logged)}"))
        elif name == "num_params" and path[0] == "train":
            # An objective may minimize the model's size; early stopping would wait for a change that never
            # comes (and Keras's EarlyStopping never sees the count: it is not in Keras's logs).
            problems.append((path, "'num_params' is the model's parameter count, which training never changes: "
                                   "early stopping cannot watch it"))
    return problems


def _check_search(spec: SweepSpec, broken: frozenset[FieldPath] = frozenset()) -> list[Problem]:
    """What an adaptive strategy or a stopping rule needs of the rest of the spec; docs/spec.md explains each limit.

    Each rule is checked when the parts it reads are valid (see `_usable`).
    """
    problems: list[Problem] = []
    search, space = spec.search, spec.search_space()

    def usable(*needs: FieldPath) -> bool:
        return _usable(broken, ("search", "strategy"), *needs)

    if search.adaptive and search.max_trials is None and usable(("search", "max_trials")):
        problems.append((("search", "max_trials"), f"is required for {search.strategy} search: it proposes "
                                                    "configurations without end"))
    intervals = [name for name, domain in space.items() if isinstance(domain, (RealInterval, IntInterval))]
    if search.strategy == "cmaes" and not intervals and usable(("hparams",)):
        problems.append((("search", "strategy"), "cmaes searches real_interval and int_interval hparams, and this "
                                                 "space has none; use tpe for a space of listed values"))
    conditional = [name for name, domain in space.items() if domain.when]
    objectives = spec.all_objectives
    named = f"{len(objectives)} ({', '.join(objective.metric for objective in objectives)})"
    if search.strategy == "cmaes" and len(objectives) > 1 and usable(("objective",)):
        problems.append((("search", "strategy"), f"cmaes optimizes one objective, and this sweep has {named}; "
                                                 "use nsga2 or tpe"))
    if spec.stopping is not None and spec.stopping.active and len(objectives) > 1 \
            and _usable(broken, ("objective",), ("stopping", "rule")):
        problems.append((("stopping", "rule"), f"stopping rules judge one objective, and this sweep has {named}; "
                                               "drop stopping, or keep one objective"))
    if search.strategy == "gp" and conditional and usable():
        problems.append((("search", "strategy"), f"gp cannot search conditional hparams (those with a when: "
                                                 f"{', '.join(conditional)}); use tpe, which can"))
    if search.warm_start and not search.adaptive and usable(("search", "warm_start")):
        problems.append((("search", "warm_start"), f"only an adaptive strategy ({', '.join(ADAPTIVE_STRATEGIES)}) "
                                                   f"learns from earlier results; {search.strategy} search would "
                                                   "ignore them"))
    problems += _check_pbt(spec, broken)
    stopping = spec.stopping
    if stopping is not None and stopping.active and stopping.min_epochs > spec.train.epochs \
            and _usable(broken, ("stopping", "rule"), ("stopping", "min_epochs"), ("train", "epochs")):
        problems.append((("stopping", "min_epochs"), f"must be <= train.epochs ({spec.train.epochs}), but got "
                                                     f"{stopping.min_epochs}: no trial would reach the first decision"))
    return problems


_PBT_FIELDS = ("population", "interval_epochs", "mutable", "max_epochs")
"""The search fields only Population Based Training reads."""


def _check_pbt(spec: SweepSpec, broken: frozenset[FieldPath]) -> list[Problem]:
    """What Population Based Training needs of the spec, and its fields refused on other strategies."""
    search = spec.search
    if not _usable(broken, ("search", "strategy")):
        return []
    if search.strategy != "pbt":
        return [(("search", name), f"only pbt search reads {name}; {search.strategy} search would ignore it")
                for name in _PBT_FIELDS if getattr(search, name) is not None and _usable(broken, ("search", name))]
    problems: list[Problem] = []
    for name, what in (("population", "how many members train at once"),
                       ("interval_epochs", "after how many epochs members are compared")):
        if getattr(search, name) is None and _usable(broken, ("search", name)):
            problems.append((("search", name), f"is required for pbt search: it says {what}"))
    epochs = spec.train.epochs
    if search.max_epochs is not None and search.max_epochs != epochs \
            and _usable(broken, ("search", "max_epochs"), ("train", "epochs")):
        problems.append((("search", "max_epochs"), f"is train.epochs by another name, and they differ "
                                                   f"({search.max_epochs} and {epochs}): give one, or the same"))
    if search.interval_epochs is not None and search.interval_epochs >= epochs \
            and _usable(broken, ("search", "interval_epochs"), ("train", "epochs"), ("search", "max_epochs")):
        problems.append((("search", "interval_epochs"), f"must be < the epochs each member trains ({epochs}), but "
                                                        f"got {search.interval_epochs}: no member would ever be "
                                                        "compared"))
    if search.max_trials is not None and search.population is not None and search.max_trials != search.population \
            and _usable(broken, ("search", "max_trials"), ("search", "population")):
        problems.append((("search", "max_trials"), f"a pbt sweep's trials are its members: max_trials must equal "
                                                   f"population ({search.population}), but got {search.max_trials}; "
                                                   "leave it out"))
    if _usable(broken, ("search", "mutable"), ("hparams",)):
        problems += _check_mutable(spec)
    if spec.stopping is not None and spec.stopping.active and _usable(broken, ("stopping", "rule")):
        problems.append((("stopping", "rule"), "pbt decides itself which members go on (the bottom quarter copies "
                                               "the top quarter's weights): drop stopping"))
    if len(spec.all_objectives) > 1 and _usable(broken, ("objective",)):
        problems.append((("objective",), "pbt ranks members by one objective, and this sweep has "
                                         f"{len(spec.all_objectives)}; keep one"))
    return problems


def _check_mutable(spec: SweepSpec) -> list[Problem]:
    mutable, space = spec.search.mutable, spec.search_space()
    if not mutable:
        return [(("search", "mutable"), "is required for pbt search: name the hparams (searched ones, e.g. "
                                        "learning_rate) that explore may change within a member's life")]
    problems: list[Problem] = []
    for position, name in enumerate(mutable):
        path: FieldPath = ("search", "mutable", position)
        domain = space.get(name)
        if domain is None:
            problems.append((path, f"{name!r} is not an hparam of this spec; its hparams: {', '.join(space)}"))
        elif isinstance(domain, Fixed):
            problems.append((path, f"{name!r} is a fixed hparam: only a searched one (a domain) can be explored"))
        elif domain.when:
            problems.append((path, f"{name!r} is conditional (it has a when): a mutable hparam must exist in every "
                                   "member"))
        elif name in mutable[:position]:
            problems.append((path, f"{name!r} is named twice"))
    return problems


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML or JSON spec file; errors name the file, and for YAML each problem's line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError([((), f"cannot read spec file: {error.strerror}")], str(path)) from None
    if path.suffix == ".json":
        return parse_spec(read_spec_text(text, syntax="json", source=str(path)), source=str(path))
    data, root = _read_yaml(text, source=str(path))
    try:
        return parse_spec(data, source=str(path))
    except SpecError as error:
        raise SpecError(error.problems, error.source, [_line_of(root, where) for where, _ in error.problems]) from None


def yaml_lines(text: str, paths: Sequence[FieldPath]) -> list[int | None]:
    """The line (from 1) on which each field path was written in the YAML document `text`: the deepest part
    of the path that the document holds, None where it holds none. For problems found after parsing, such
    as a REST API's YAML body, whose lines the 422 answer then names as `sweeper check` does."""
    _, root = _read_yaml(text, None)
    return [_line_of(root, path) for path in paths]


def read_spec_text(text: str, *, syntax: Literal["yaml", "json"] = "yaml", source: str | None = None) -> Any:
    """A spec document's text parsed into plain data (not yet validated); a syntax error names its line.

    Shared by spec files and the REST API's YAML bodies, so both report a typo the same way.
    """
    if syntax == "yaml":
        return _read_yaml(text, source)[0]
    try:
        return json.loads(text)
    except RecursionError:
        raise SpecError([((), "the document nests too deeply to be a sweep spec")], source) from None
    except json.JSONDecodeError as error:
        raise SpecError([((), f"line {error.lineno}: invalid JSON: {error.msg}")], source) from None


def _read_yaml(text: str, source: str | None) -> tuple[Any, yaml.Node | None]:
    """The document's data, and its node tree, whose marks say on which line each part was written."""
    loader = yaml.SafeLoader(text)
    try:
        # What yaml.safe_load does, keeping the node that it drops.
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except RecursionError:
        raise SpecError([((), "the document nests too deeply to be a sweep spec")], source) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SpecError([((), f"{where}invalid YAML: {getattr(error, 'problem', None) or error}")], source) from None
    finally:
        loader.dispose()


def _line_of(root: yaml.Node | None, path: FieldPath) -> int | None:
    """The line (from 1) where the deepest part of `path` that the document holds was written; None for none."""
    line, node = None, root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next(((key, value) for key, value in node.value
                          if isinstance(key, yaml.ScalarNode) and key.value == str(part)), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _inner_loc(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    # A discriminated union puts the tag first (('real_interval', 'min')); users never wrote it.
    if loc and isinstance(raw, dict) and loc[0] == raw.get("type"):
        loc = loc[1:]
    return tuple(loc)


def _rule(error: Any) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if error.get("type") == "extra_forbidden":
        message = "unknown field (not allowed here)"
    if error.get("type") == "union_tag_invalid":
        message = "type must be one of discrete, real_interval, int_interval, fixed"
    if error.get("type") == "union_tag_not_found":
        message = "needs a type: discrete, real_interval, int_interval or fixed"
    return message


def _dedupe(problems: list[tuple[tuple[str | int, ...], str]]) -> list[tuple[tuple[str | int, ...], str]]:
    seen: dict[tuple[tuple[str | int, ...], str], None] = {}
    for problem in problems:
        seen.setdefault(problem, None)
    return list(seen)

