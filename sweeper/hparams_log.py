"""TensorBoard HParams logging: a sweep's experiment config and each trial's session.

Layout: `<logdir>/<sweep_id>/` holds exactly one hparams_config (the exact domains and the metrics);
`<logdir>/<sweep_id>/<run name>/` (`trial-0007`, see `sweeper.log_location`) holds a trial's session start,
its final scalars (the objective, `num_params`, and `pruned_at_epoch` when it was pruned) and its session end; a
Population Based Training member has instead one session per segment, in `<run name>/segment-01`, ... (see
`segment_dir`), with `member` and `parent` among its hparams. The logdir is a local
folder or an object-store URL (`sweeper.log_location`). The API server writes the config, so this
module loads no TensorFlow at import time and `write_experiment` loads it only for a URL; the session
helpers, used by workers, import it where they run.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

# `summary_v2` rather than the public `api` module: `api` imports the Keras callback, which imports
# TensorFlow. `summary_v2` resolves TensorFlow lazily, and only for writing through `tf.summary`.
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2 as hp
from tensorboard.summary.writer.record_writer import RecordWriter

from sweeper import _log_files, log_location
from sweeper._domains import Discrete, Fixed, IntInterval, RealInterval, SearchDomain
from sweeper._spec import SweepSpec

# One fixed name, so "this sweep already has its config" is a file check, and the config sorts first.
# TensorBoard reads any file whose name contains "tfevents".
CONFIG_FILE = "events.out.tfevents.0000000000.sweeper.hparams_config"

PARETO_RANK = "pareto_rank"
PARETO_GROUP = "pareto"
"""A multi-objective sweep's completed trials get `pareto_rank` (0 on the front) in their folder's `pareto/`
subfolder, written by the server as the front changes (api.pareto_logs)."""
NUM_PARAMS = "num_params"
"""The model's parameter count: in every epoch's metrics, and a scalar in the trial's folder."""
REPLICAS = "replicas"
GLOBAL_BATCH_SIZE = "global_batch_size"
"""Hparams of a sweep of more than one GPU per trial (`train.gpus_per_trial`), in its config and each trial's
session: the replicas a trial trains on, and the batch they split, `batch_size` (per replica) x replicas."""
PRUNED_AT_EPOCH = "pruned_at_epoch"
"""A scalar in a pruned trial's folder only: the number of epochs it trained before the server pruned it,
which is the 0-based index of its last epoch + 1. A completed, cancelled or failed trial has none."""
PBT_MEMBER = "member"
"""A Population Based Training segment's session hparam: the number of the member (trial) it belongs to."""
PBT_PARENT = "parent"
"""A PBT segment's session hparam: the number of the member whose weights it started from; 0 for none."""
SEGMENT_FOLDER_PREFIX = "segment-"


def segment_dir(trial_dir: str | Path, segment: int) -> str:
    """A PBT member's folder for one segment's HParams session: `<trial folder>/segment-01`, `segment-02`, ...

    A member's hparams change at each exploit, so each stretch of its life with the same hparams is a session
    (a row of the dashboard) of its own, while its train/ and validation/ curves stay one run.
    """
    if segment < 1:
        raise ValueError(f"`segment >= 1` must hold, but got {segment=}")
    return log_location.join(trial_dir, f"{SEGMENT_FOLDER_PREFIX}{segment:02d}")


# (tag, group, display name, dataset type) of the per-epoch scalars that Keras's TensorBoard callback
# writes into a trial's train/ and validation/ folders.
_EPOCH_METRICS = (
    ("epoch_loss", "train", "train loss", hp.Metric.TRAINING),
    ("epoch_loss", "validation", "validation loss", hp.Metric.VALIDATION),
    ("epoch_accuracy", "train", "train accuracy", hp.Metric.TRAINING),
    ("epoch_accuracy", "validation", "validation accuracy", hp.Metric.VALIDATION),
    ("epoch_learning_rate", "train", "learning rate", hp.Metric.TRAINING),
)
# (key in an epoch's metrics, display name, dataset type) of the same at the last epoch of a Population Based
# Training segment: a segment's session has no train/ and validation/ runs of its own (its member's curves
# stay one run across exploits), so these are scalars in its own folder, tagged `segment_end/<key>`: apart
# from the hparam `learning_rate`, and one group of the Scalars dashboard.
SEGMENT_END = "segment_end"
_SEGMENT_END_METRICS = (
    ("loss", "train loss", hp.Metric.TRAINING),
    ("val_loss", "validation loss", hp.Metric.VALIDATION),
    ("accuracy", "train accuracy", hp.Metric.TRAINING),
    ("val_accuracy", "validation accuracy", hp.Metric.VALIDATION),
    ("learning_rate", "learning rate", hp.Metric.TRAINING),
)


def segment_end_columns(metrics: Mapping[str, float], objective_metric: str) -> dict[str, float]:
    """A PBT segment's columns besides the objective (written apart): the losses, accuracies and learning rate
    of its last epoch's `metrics`, those the model has."""
    return {f"{SEGMENT_END}/{key}": metrics[key] for key, _, _ in _SEGMENT_END_METRICS
            if key in metrics and key != objective_metric}


class SessionStatus(StrEnum):
    """How a trial's session ended, as the HParams dashboard shows it."""

    success = "success"
    failure = "failure"
    aborted = "aborted"
    """Stopped on purpose before its last epoch: pruned (its folder then holds `PRUNED_AT_EPOCH`), or its
    sweep cancelled."""

    @property
    def proto(self) -> int:
        # TensorBoard's Status enum has no ABORTED (as of 2.21: UNKNOWN, SUCCESS, FAILURE, RUNNING), and
        # its dashboard drops sessions whose status is not one of those, so an aborted session ends as
        # UNKNOWN: shown, never counted as a success or a crash, and final (it has an end time).
        return {SessionStatus.success: api_pb2.STATUS_SUCCESS, SessionStatus.failure: api_pb2.STATUS_FAILURE,
                SessionStatus.aborted: getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN)}[self]


def hparams_for(spec: SweepSpec) -> list[hp.HParam]:
    """The spec's hparams with their exact domains, conditional ones included: those that vary first, then
    the fixed ones (a Fixed value, or a discrete domain of one value), each group in the spec's order.

    Each log-scaled hparam is followed by `log10_<name>` over the log10 of its bounds: the
    parallel-coordinates view draws axes linearly, where 1e-4..1e-1 would crowd into one end. A sweep of
    more than one GPU per trial ends with `replicas` and `global_batch_size`.
    """
    space = spec.search_space()
    hparams: list[hp.HParam] = []
    for name, domain in sorted(space.items(), key=lambda item: not varies(item[1])):
        hparams.append(hp.HParam(name, _domain(domain), description=_description(domain)))
        if isinstance(domain, (RealInterval, IntInterval)) and domain.log:
            hparams.append(hp.HParam(f"log10_{name}", hp.RealInterval(math.log10(domain.min), math.log10(domain.max)),
                                     description=f"log10 of {name}, for a linear axis."))
    population = spec.search.population
    if spec.search.strategy == "pbt" and population is not None:
        # Each segment of a member's life is a session (see the PBT design): these say whose it is and where
        # its weights came from.
        hparams += [hp.HParam(PBT_MEMBER, hp.IntInterval(0, population),
                              description="Population Based Training: the member (trial number) of this segment."),
                    hp.HParam(PBT_PARENT, hp.IntInterval(0, population),
                              description="Population Based Training: the member whose weights this segment "
                                          "copied (0 for a member's first segment).")]
    return hparams + _distribution_hparams(spec)


def _distribution_hparams(spec: SweepSpec) -> list[hp.HParam]:
    replicas = spec.train.gpus_per_trial
    if replicas == 1:
        return []
    per_replica = spec.search_space().get("batch_size", Fixed(value=spec.train.batch_size))
    if isinstance(per_replica, IntInterval):
        domain: hp.Domain = hp.IntInterval(per_replica.min * replicas, per_replica.max * replicas)
    elif isinstance(per_replica, Discrete):
        domain = hp.Discrete([value * replicas for value in per_replica.values])
    elif isinstance(per_replica, Fixed):
        domain = hp.Discrete([per_replica.value * replicas])
    else:  # a real interval: batch sizes are whole numbers, but the spec's domain is the spec's business
        domain = hp.RealInterval(float(per_replica.min) * replicas, float(per_replica.max) * replicas)
    return [hp.HParam(REPLICAS, hp.Discrete([replicas]),
                      description="The replicas (GPUs) each trial trains on with MirroredStrategy."),
            hp.HParam(GLOBAL_BATCH_SIZE, domain,
                      description=f"The examples in one training step across all replicas: batch_size (per "
                                  f"replica) x {replicas}.")]


def varies(domain: SearchDomain) -> bool:
    """Whether trials of a sweep can differ in this hparam."""
    return not isinstance(domain, Fixed) and not (isinstance(domain, Discrete) and len(domain.values) == 1)


def metrics_for(spec: SweepSpec) -> list[hp.Metric]:
    """The objective, num_params and pruned_at_epoch (scalars in each trial's own folder), then the
    per-epoch train/validation scalars, or for Population Based Training their values at each segment's end.
    num_params is listed once, as the objective, when it is one."""
    objective = spec.objective
    metrics = [hp.Metric(objective.metric, display_name=f"{objective.metric} (objective)",
                         description=f"The trial's final {objective.metric}; the sweep's goal is to "
                                     f"{objective.goal} it.")]
    if objective.metric != NUM_PARAMS:
        metrics.append(hp.Metric(NUM_PARAMS, display_name="parameters",
                                 description="The model's parameter count, trainable and not."))
    metrics.append(hp.Metric(PRUNED_AT_EPOCH, display_name="pruned at epoch",
                             description="Only pruned trials have it: the number of epochs the trial trained "
                                         "before the server pruned it. Completed, cancelled and failed trials "
                                         "have none."))
    if spec.objectives is not None:
        names = ", ".join(objective.metric for objective in spec.objectives)
        metrics.append(hp.Metric(PARETO_RANK, group=PARETO_GROUP, display_name="Pareto rank",
                                 description=f"0: on the Pareto front of {names} (no other completed trial is at "
                                             "least as good in every objective and better in one); 1: on the "
                                             "front once those are set aside; and so on."))
    if spec.search.strategy == "pbt":
        return metrics + [hp.Metric(f"{SEGMENT_END}/{key}", display_name=f"{display} (segment end)",
                                    dataset_type=dataset_type)
                          for key, display, dataset_type in _SEGMENT_END_METRICS if key != objective.metric]
    return metrics + [hp.Metric(tag, group=group, display_name=display, dataset_type=dataset_type)
                      for tag, group, display, dataset_type in _EPOCH_METRICS]


def write_scalar_file(folder: str | Path, tag: str, value: float, step: int, *, suffix: str) -> None:
    """One scalar in a new event file of `folder`, without TensorFlow (the server writes these).

    Files are named by the time of writing, so TensorBoard, which reads a folder's event files in name
    order, reads the latest value last.
    """
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb

    _log_files.makedirs(folder)
    now = time.time()
    events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
              event_pb2.Event(wall_time=now, step=step, summary=scalar_pb(tag, value))]
    name = f"events.out.tfevents.{now:017.6f}.sweeper.{suffix}"
    _log_files.write_atomically(log_location.join(folder, name),
                                event_records([event.SerializeToString() for event in events]))


def experiment_config_pb(spec: SweepSpec) -> Any:
    """The sweep's hparams_config as a TensorBoard `Summary` proto, its varying hparams marked `differs`.

    TensorBoard lists an experiment's hparams by `differs` (true first), then by name, and its HParams
    dashboard ticks the first five for its table and plots. Unmarked, a sweep's hparams are all alike to it,
    so fixed ones such as `batch_size` can take those places by name while `units` or `optimizer` stay
    unticked. `hparams_config_pb` has no argument for `differs`, so it is set on the proto it builds.
    """
    summary = hp.hparams_config_pb(hparams_for(spec), metrics_for(spec))
    varying = {name for name, domain in spec.search_space().items() if varies(domain)}
    varying |= {f"log10_{name}" for name, domain in spec.search_space().items()
                if isinstance(domain, (RealInterval, IntInterval)) and domain.log}
    if "batch_size" in varying:
        varying.add(GLOBAL_BATCH_SIZE)
    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in varying
    value.metadata.plugin_data.content = data.SerializeToString()
    return summary


def write_experiment(sweep_dir: str | Path, spec: SweepSpec) -> None:
    """Write the sweep's one hparams_config into `sweep_dir` (a folder or a URL), unless it already holds one.

    Written whole under a temporary name and renamed into place, so TensorBoard never reads half a
    config and two racing writers still leave exactly one file. A local folder is written with plain
    file calls, never through TensorFlow's gfile, which would load TensorFlow into the API server; a
    URL needs gfile (see `sweeper._log_files`).
    """
    _log_files.makedirs(sweep_dir)
    target = log_location.join(sweep_dir, CONFIG_FILE)
    if _log_files.exists(target):
        return
    now = time.time()
    events = [
        # The same header event that TensorBoard's own EventFileWriter starts a file with.
        event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=now, step=0, summary=experiment_config_pb(spec)),
    ]
    _log_files.write_atomically(target, event_records([event.SerializeToString() for event in events]))


def event_records(records: list[bytes]) -> bytes:
    """`records` framed as an event file holds them (TFRecord: length, CRCs, data)."""
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for record in records:
        writer.write(record)
    return buffer.getvalue()


class TrialSession:
    """A trial's HParams session in its own folder: start on enter, end with its status on exit.

    TensorBoard takes a tag's summary metadata from the first event that carries it, so a session end
    is written exactly once, at the real end (a provisional RUNNING end would freeze the status). An
    exception inside the `with` block ends the session as FAILURE (and propagates); a normal exit ends
    it with `status`: SUCCESS unless the trainer set another, and no end at all when it set None (a
    trial handed back for a retry, which continues in the same folder). Only the hparams in the trial's
    dict are written, plus `log10_<name>` for each name in `log_scaled`, so log-scaled hparams plot evenly.

    `resumed` continues a session whose start an earlier attempt already wrote (and which the retry
    kept, see `sweeper.training.trial_logs`): no second start is written, since TensorBoard would show
    the trial twice, and the dashboard keeps the trial's first start time.
    """

    def __init__(self, trial_dir: str | Path, name: int | str, hparams: Mapping[str, Any],
                 log_scaled: tuple[str, ...] | list[str] = (), resumed: bool = False):
        self.trial_dir = str(trial_dir)
        self.name = str(name)
        """The session's group name, which the dashboard shows as the trial's: its run name (`trial-0007`)."""
        self.hparams = {**dict(hparams), **_log10_hparams(hparams, log_scaled)}
        self.resumed = resumed
        self.status: SessionStatus | None = SessionStatus.success
        """How a normal exit ends the session; None writes no end."""
        self._writer: Any = None

    def __enter__(self) -> TrialSession:
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(self.trial_dir)
        if not self.resumed:
            with self._writer.as_default():
                hp.hparams(self.hparams, trial_id=self.name)
            # Flushed now so the dashboard lists the trial while it trains, not only once it has ended.
            self._writer.flush()
        return self

    def write_objective(self, metric: str, value: float, step: int) -> None:
        """The trial's objective value, as the scalar that the config's objective metric names."""
        self.write_scalars({metric: value}, step=step)

    def write_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Scalars in the trial's own folder (the HParams table's columns for the config's metrics of group "")."""
        import tensorflow as tf

        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value), step=step)
        self._writer.flush()

    def end(self, status: SessionStatus) -> None:
        """Write the session end with `status` and close the writer; call it once, at the real end."""
        import tensorflow as tf
        # This TensorBoard module imports TensorFlow, hence here rather than at the top.
        from tensorboard.plugins.hparams import summary as hparams_summary_v1

        pb = hparams_summary_v1.session_end_pb(status.proto)
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=0)
        self._writer.close()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        status = SessionStatus.failure if exc_type is not None else self.status
        if status is None:
            self._writer.close()
        else:
            self.end(status)


def _log10_hparams(hparams: Mapping[str, Any], log_scaled: tuple[str, ...] | list[str]) -> dict[str, float]:
    # Only names the trial has: a conditional hparam may be absent from this trial.
    columns: dict[str, float] = {}
    for name in log_scaled:
        if name not in hparams:
            continue
        value = hparams[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"hparam {name} is searched on a log scale, so it must be a number > 0, "
                             f"but got {value!r}")
        columns[f"log10_{name}"] = math.log10(value)
    return columns


def _domain(domain: SearchDomain) -> hp.Domain:
    if isinstance(domain, Discrete):
        return _discrete(domain.values)
    if isinstance(domain, RealInterval):
        return hp.RealInterval(float(domain.min), float(domain.max))
    if isinstance(domain, IntInterval):
        return hp.IntInterval(domain.min, domain.max)
    if isinstance(domain, Fixed):
        return _discrete([domain.value])
    raise TypeError(f"an hparam domain must be Discrete, RealInterval, IntInterval or Fixed, but got {domain!r}")


def _discrete(values: list[Any]) -> hp.Discrete:
    # TensorBoard wants one Python type per domain; a spec may mix ints and floats as "numbers".
    if any(isinstance(v, float) for v in values) and all(isinstance(v, (int, float)) for v in values):
        return hp.Discrete([float(v) for v in values], dtype=float)
    return hp.Discrete(values)


def _description(domain: SearchDomain) -> str | None:
    notes = []
    if isinstance(domain, (RealInterval, IntInterval)) and domain.log:
        notes.append("Sampled log-uniformly.")
    if isinstance(domain, (RealInterval, IntInterval)) and domain.step is not None:
        notes.append(f"In steps of {domain.step} from {domain.min}.")
    if isinstance(domain, Fixed):
        notes.append("Fixed for the whole sweep.")
    if domain.when:
        notes.append("Only in trials where " + " and ".join(
            f"{parent} is {' or '.join(map(repr, values))}" for parent, values in domain.when.items()) + ".")
    return " ".join(notes) or None
