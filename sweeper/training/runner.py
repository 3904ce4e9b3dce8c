"""The Keras trial runner: train one assignment and log it for TensorBoard's HParams dashboard.

The runner trains; it never decides. After each epoch it hands the metrics to `on_epoch_end` (the
worker reports them to the server) and stops early when the answer is "stop", "prune" or "cancel";
after each batch it asks `interrupt` whether to stop at once (a cancelled sweep, a lost lease).
Everything else comes from the assignment: the loss, metrics, class weights, early stopping, seed,
mixed precision and XLA of `TrainSettings`, which epoch's metrics are the trial's result, and the
checkpoint folder and lease that an interrupted trial resumes from (see `sweeper.training.checkpoints`).

A trial of `train.gpus_per_trial` N above 1 trains with `tf.distribute.MirroredStrategy` over the first N
of the worker's GPUs (on a CPU worker split into devices, `sweeper.training.devices`, its CPU devices): the
model, its optimizer and metrics are built, compiled and restored inside the strategy's scope. The
hparam `batch_size` is per replica, so the data is batched at batch_size x N, and the trial's HParams
session also gets `replicas` and `global_batch_size`. The checkpoint holds plain Keras weights, so a trial
resumes under any strategy: a retry on another group of the same size, or on another worker.

Every epoch's metrics include `num_params`, the model's parameter count, so a sweep can minimize it; the
trial's folder gets it as a scalar beside the objective, and a pruned trial's also `pruned_at_epoch` (the
epochs it trained), so the HParams dashboard tells pruned trials from completed and cancelled ones.

How a trial ends decides what is left of it. Completed, pruned or cancelled: a session end. Stopped
("stop", to be handed back): no session end, and the checkpoint of its last epoch, which the retry
continues. Failed: a FAILURE session end; a loss that becomes NaN or infinite fails it with
`NonFiniteLossError`. Abandoned (`on_epoch_end` or `interrupt` raised `TrialAbandonedError`: the trial is
another process's now): training ends at once and nothing more is written, not even a session end.
The runner never deletes a checkpoint: the worker does, once the server has recorded the trial's end.
A failure to write the trial's logs or checkpoint raises `InfrastructureError`, a retryable error.

A member of a Population Based Training sweep (`Assignment.pbt`) also saves a snapshot at each interval's
end and carries out exploit answers: its training is a run of `fit` calls, one per segment, with the model
rebuilt from each segment's hparams in between (see `sweeper.training.population`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sweeper import _log_files, _registry, log_location
from sweeper._errors import InfrastructureError, NonFiniteLossError, RetryableError, TrialAbandonedError
from sweeper._spec import LOSSES, METRICS, EarlyStopping, Objective
from sweeper.hparams_log import GLOBAL_BATCH_SIZE, NUM_PARAMS, PRUNED_AT_EPOCH, REPLICAS, SessionStatus, TrialSession
from sweeper.messages import Action, Assignment, Directive, Exploit, PbtMember, PbtSegment
from sweeper.training import population
from sweeper.training.checkpoints import Resume, TrialCheckpoint
from sweeper.training.datasets import TrainingData, training_data, using_data_root
from sweeper.training.schedules import build_learning_rate, build_optimizer, schedule_callbacks
from sweeper.training.trial_logs import rewind_segment_logs, rewind_trial_logs, wait_to_write_after_earlier_files

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

EpochCallback = Callable[[int, dict[str, float]], Directive | Action | str]
"""Called with (epoch index from 0, metrics); answers the server's `Directive` (or its bare `Action`):
continue, stop, prune or cancel, or, to a Population Based Training member, exploit with its `Exploit`.

It raises `TrialAbandonedError` when the trial is no longer this process's: the epoch is neither
logged nor saved, and the error reaches `run_trial`'s caller."""

Interrupt = Callable[[], Action | str | None]
"""Polled after every training batch: None to go on, or cancel or stop to end training at once.

The epoch it cuts short leaves no trace (no metrics, scalars or checkpoint): its partial metrics would
be no epoch's. Cancel ends the trial for good; stop keeps the last checkpoint for a retry. Like
`on_epoch_end`, it may raise `TrialAbandonedError`."""

_STOP_ACTIONS = frozenset({Action.stop, Action.prune, Action.cancel})
_SESSION = "write the HParams session to the trial's logs in {}"
EARLY_STOPPING = "early_stopping"
"""`TrialResult.stopped_by` when Keras's EarlyStopping ended training."""


@dataclass(frozen=True)
class TrialResult:
    """How a trial's training ended. When an `interrupt` stopped it before any epoch finished,
    `metrics` is empty, `epochs_run` 0, `objective` NaN and `objective_epoch` -1."""

    metrics: dict[str, float]
    """The objective epoch's metrics (loss, val_loss, each train.metrics name and its val_ form,
    learning_rate, num_params): the last epoch's, or with objective epoch "best" the best epoch's."""
    epochs_run: int
    objective: float
    """The objective metric's value in `metrics`."""
    objective_epoch: int
    """The epoch (from 0) that `metrics` and `objective` come from."""
    stopped_by: Action | str | None = None
    """Why training ended before the last epoch: the worker's answer (`Action.stop`, `prune` or
    `cancel`), "early_stopping", or None when every epoch ran."""
    resumed_from: int = 0
    """The epoch this attempt started at: 0, or the number of epochs its checkpoint had finished.
    `epochs_run` and `objective_epoch` count the trial's epochs from 0 all the same."""
    replicas: int = 1
    """The replicas the model trained on (MirroredStrategy's `num_replicas_in_sync`): train.gpus_per_trial."""

    @property
    def stopped(self) -> bool:
        """True when `on_epoch_end` or `interrupt` answered "stop", "prune" or "cancel" (early stopping is
        not a stop)."""
        return self.stopped_by in _STOP_ACTIONS


def run_trial(assignment: Assignment, on_epoch_end: EpochCallback, data_root: Path | None = None,
              interrupt: Interrupt | None = None, callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrialResult:
    """Train the assignment's model; log train/ and validation/ scalars and the HParams session.

    `callbacks` are extra Keras callbacks for `fit`, after sweeper's own (a benchmark's clock, a
    profiler); they see every batch but cannot change what is reported.

    File datasets (npz:..., images:...) are read under `data_root` (default ./data), which model
    builders see as `current_data_root()`. When the assignment's checkpoint folder holds an earlier
    attempt's checkpoint, training resumes after its last finished epoch, and the trial's TensorBoard
    folder keeps exactly what those epochs logged, so every epoch is logged once, and its session start.

    Any other exception ends the HParams session as FAILURE and propagates, so the worker can report it.
    A "prune" or "cancel" answer ends it as aborted (see `SessionStatus.proto`), and a pruned trial's
    folder also gets `pruned_at_epoch`, the number of epochs it trained; a "stop" answer leaves
    it without an end, since the worker hands the trial back and the retry continues the session. A
    `TrialAbandonedError` leaves it without an end too, and writes nothing more at all.

    The checkpoint is left in place however the trial ends: whether it is still needed is known only
    once the server has recorded the end (a completion it never heard of is retried), so the worker
    deletes it then. A checkpoint that cannot be used is set aside (see `TrialCheckpoint`), not deleted.
    """
    checkpoint = TrialCheckpoint.for_assignment(assignment)
    resume = checkpoint.load()
    epochs_done = resume.epochs_done if resume is not None else 0
    if resume is not None:
        logger.info("%s resumes after epoch %d (attempt %d, from lease %d's checkpoint)", assignment.trial_name,
                    resume.epochs_done - 1, assignment.attempt, resume.lease_token)
    segment = population.segment_at(assignment.pbt, epochs_done) if assignment.pbt is not None else None
    with _log_files.io_failures(f"rewind the trial's logs in {assignment.logdir}"):
        session_started = rewind_trial_logs(assignment.logdir, epochs_done)
        if segment is not None:
            session_started = rewind_segment_logs(assignment.logdir, segment.segment)
    sessions: TrialSession | population.MemberSessions
    if segment is None:
        # Named after the trial's folder, its run in TensorBoard: the dashboard's sessions and runs then
        # agree, and sort in number order.
        sessions = TrialSession(assignment.logdir, log_location.name(assignment.logdir),
                                {**assignment.hparams, **distribution_hparams(assignment)}, assignment.log_scaled,
                                resumed=session_started)
    else:
        sessions = population.MemberSessions(assignment, segment, resumed=session_started)
    with _trial_session(assignment, sessions) as session:
        with _trial_dtype_policy(assignment.train.mixed_precision), _seeded(_trial_seed(assignment)):
            try:
                result, history = _train(assignment, on_epoch_end, data_root, checkpoint, resume, interrupt,
                                         callbacks, session)
            finally:
                # Frees the graph and layer-name counters, so one worker process can run many trials.
                # It also resets Keras's dtype policy, hence inside the block that restores it.
                keras.backend.clear_session()
        if result.objective_epoch >= 0:
            with _log_files.io_failures(f"write the trial's final scalars to its logs in {assignment.logdir}"):
                if isinstance(session, population.MemberSessions):
                    session.write_final(assignment.objective.metric, history,
                                        pruned=result.stopped_by == Action.prune)
                else:
                    _write_final_scalars(session, assignment.objective.metric, result)
        session.status = _session_status(result.stopped_by)
    return result


def _write_final_scalars(session: TrialSession, objective_metric: str, result: TrialResult) -> None:
    """The HParams table's columns from the trial's own folder: the objective and num_params at the objective
    epoch, and for a pruned trial `pruned_at_epoch` at its last epoch.

    `pruned_at_epoch` is the number of epochs the trial trained (its last epoch's 0-based index + 1), so
    the column reads like `epochs_run` and a trial pruned after its first epoch shows 1, not 0.
    A cancelled trial, which ends the same way in the dashboard, never gets it.
    """
    # A dict: with num_params as the objective, it is written once.
    session.write_scalars({objective_metric: result.objective, NUM_PARAMS: result.metrics[NUM_PARAMS]},
                          step=result.objective_epoch)
    if result.stopped_by == Action.prune:
        session.write_scalars({PRUNED_AT_EPOCH: result.epochs_run}, step=result.epochs_run - 1)


_Session = TypeVar("_Session", TrialSession, population.MemberSessions)


@contextmanager
def _trial_session(assignment: Assignment, session: _Session) -> Iterator[_Session]:
    """The trial's `TrialSession` (a PBT member's `MemberSessions`) entered, with a failure to write it
    raised as `InfrastructureError`.

    An abandoned trial's session gets no end: the trial's folder is another process's to write now. When
    another error ends the trial, failing to write its FAILURE end is only logged: the error that ended
    the trial is the one the worker must report.
    """
    action = _SESSION.format(assignment.logdir)
    with _log_files.io_failures(action):
        session.__enter__()
    try:
        yield session
    except BaseException as error:
        abandoned = isinstance(error, TrialAbandonedError)
        if abandoned:
            session.status = None  # only closes the writer, which holds nothing unwritten
        try:
            with _log_files.io_failures(action):
                session.__exit__(*((None, None, None) if abandoned else (type(error), error, error.__traceback__)))
        except InfrastructureError as failure:
            logger.warning("%s: %s", assignment.trial_name, failure)
        raise
    with _log_files.io_failures(action):
        session.__exit__(None, None, None)


def _train(assignment: Assignment, on_epoch_end: EpochCallback, data_root: Path | None,
           checkpoint: TrialCheckpoint, resume: Resume | None, interrupt: Interrupt | None,
           extra_callbacks: Sequence[keras.callbacks.Callback],
           session: TrialSession | population.MemberSessions) -> tuple[TrialResult, list[dict[str, float]]]:
    """Train the trial; its result, and the metrics of every epoch it has (a resumed one's earlier ones too)."""
    settings, pbt = assignment.train, assignment.pbt
    epochs = settings.epochs
    first_epoch = resume.epochs_done if resume is not None else 0
    # A retried PBT member goes on with the hparams of the segment it resumes in (its checkpoint saved after
    # an exploit holds the donor's weights), not necessarily the assignment's, which are the latest segment's.
    segment = population.segment_at(pbt, first_epoch) if pbt is not None else None
    hparams = segment.hparams if segment is not None else assignment.hparams
    strategy = distribution_strategy(settings.gpus_per_trial)
    replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
    data = training_data(assignment.dataset, data_root, settings.validation_split)
    batches = _Batches(assignment, data, replicas)
    train, validation, steps_per_epoch = batches.for_hparams(hparams)

    architecture = _architecture(assignment, data, data_root)
    history: list[dict[str, float]] = []
    # Variables made in the scope are mirrored on every replica: the model's, the optimizer's, the metrics'.
    with _scope(strategy):
        model = _compiled_model(assignment, hparams, architecture, steps_per_epoch)
        if resume is not None:
            _build(model, train)
            checkpoint.restore(model, resume)
            # A checkpoint saved before epochs reported num_params lacks it; the model's count is the same.
            num_params = float(model.count_params())
            history = [{NUM_PARAMS: num_params, **metrics} for metrics in resume.history]
    if strategy is not None:
        logger.info("%s trains on %d replicas (%s), global batch size %d", assignment.trial_name, replicas,
                    ", ".join(strategy.extended.worker_devices), _batch_size(assignment) * replicas)

    chains = _KeptChains()
    reporter = _EpochReporter(chains.keeping(on_epoch_end), assignment.objective.metric, epochs, history,
                              pbt, segment)
    tensorboard = _LiveTensorBoard(assignment.logdir)
    watcher = _Interruptible(chains.keeping(interrupt)) if interrupt is not None else None
    interrupted: Action | None = None
    try:
        # One `fit` per PBT segment: an exploit answer ends it, and the next goes on with the model rebuilt.
        while len(history) < epochs:
            # Order matters at an epoch's end: early stopping decides (the reporter needs to know whether
            # training ends here), a PBT member's snapshot is saved (the answer may send others to copy it),
            # the metrics are reported, then the scalars logged and the checkpoint saved. An answer that the
            # trial was abandoned thus ends training before anything of the epoch is written but a snapshot
            # (immutable, and of an epoch that did finish), and a crash between the report and the save
            # trains that epoch again.
            callbacks = [_FailOnNaN(), *schedule_callbacks(hparams), _LearningRateInLogs(),
                         *_early_stopping(settings.early_stopping),
                         *([population.Snapshots(pbt, epochs, hparams)] if pbt is not None else []),
                         reporter, tensorboard, _Checkpointing(checkpoint, reporter, epochs),
                         *([watcher] if watcher is not None else []), *extra_callbacks]
            # shuffle=False: the pipeline shuffles, seeded; Keras's own flag does nothing for tf.data but warn.
            model.fit(train, validation_data=validation, epochs=epochs, initial_epoch=len(history), shuffle=False,
                      verbose=0, class_weight=class_weights(settings.class_weight, data), callbacks=callbacks)
            exploit = reporter.take_exploit()
            if exploit is None:
                break
            hparams = exploit.segment.hparams
            train, validation, steps_per_epoch = batches.for_hparams(hparams)
            model = _exploited_model(assignment, exploit, history, session, architecture, train, steps_per_epoch,
                                     strategy)
            reporter.segment = exploit.segment
            # The member's lease checkpoint of the exploit's epoch gets the donor's weights: a retry resumes
            # from those, with the new segment's hparams.
            checkpoint.save(model, history)
            if watcher is not None:
                # A worker that is leaving hands the member back now, with the exploit carried out.
                watcher.check()
    except _Interrupted as stop:
        interrupted = stop.action
    except BaseException as error:
        chains.restore(error)
        try:
            tensorboard.close()
        except InfrastructureError as failure:
            # The error that ended training is the one to report.
            logger.warning("%s: %s", assignment.trial_name, failure)
        raise
    tensorboard.close()

    if not reporter.history:
        if interrupted is not None:
            return TrialResult(metrics={}, epochs_run=0, objective=math.nan, objective_epoch=-1,
                               stopped_by=interrupted, resumed_from=first_epoch, replicas=replicas), []
        raise RuntimeError("training ended before its first epoch")
    objective_epoch = _objective_epoch(assignment.objective, reporter.history)
    metrics = reporter.history[objective_epoch]
    _require_objective(assignment.objective.metric, metrics)
    stopped_by = interrupted or reporter.stopped_by or (EARLY_STOPPING if len(reporter.history) < epochs else None)
    return TrialResult(metrics=metrics, epochs_run=len(reporter.history),
                       objective=metrics[assignment.objective.metric], objective_epoch=objective_epoch,
                       stopped_by=stopped_by, resumed_from=first_epoch, replicas=replicas), reporter.history


class _Batches:
    """The trial's training and validation batches, made again only when an exploit changes `batch_size`."""

    def __init__(self, assignment: Assignment, data: TrainingData, replicas: int):
        self._assignment, self._data, self._replicas = assignment, data, replicas
        self._made: tuple[int, tuple[Any, Any, int]] | None = None

    def for_hparams(self, hparams: Mapping[str, Any]) -> tuple[Any, Any, int]:
        """(train, validation, steps per epoch) at the batch size of `hparams` (per replica) times the replicas."""
        batch_size = int(hparams.get("batch_size", self._assignment.train.batch_size)) * self._replicas
        if self._made is None or self._made[0] != batch_size:
            train, validation = self._data.batches(batch_size, seed=_trial_seed(self._assignment))
            self._made = (batch_size, (train, validation, math.ceil(self._data.train_size / batch_size)))
        return self._made[1]


def _compiled_model(assignment: Assignment, hparams: Mapping[str, Any],
                    architecture: Callable[[Mapping[str, Any]], keras.Model], steps_per_epoch: int) -> keras.Model:
    """The assignment's model built from `hparams` and compiled with their optimizer and learning rate."""
    model = architecture(hparams)
    learning_rate = build_learning_rate(hparams, assignment.train.epochs, steps_per_epoch)
    settings = assignment.train
    model.compile(optimizer=build_optimizer(hparams, learning_rate), loss=build_loss(settings.loss),
                  metrics=build_metrics(settings.metrics), jit_compile=settings.jit_compile)
    return model


def _architecture(assignment: Assignment, data: TrainingData,
                  data_root: Path | None) -> Callable[[Mapping[str, Any]], keras.Model]:
    """Builds the assignment's model, uncompiled, for given hparams."""
    def build(hparams: Mapping[str, Any]) -> keras.Model:
        with using_data_root(data_root):
            return _registry.models.get(assignment.model)(hparams, data.info)

    return build


def _exploited_model(assignment: Assignment, exploit: Exploit, history: list[dict[str, float]],
                     session: TrialSession | population.MemberSessions,
                     architecture: Callable[[Mapping[str, Any]], keras.Model], train: Any,
                     steps_per_epoch: int, strategy: tf.distribute.Strategy | None) -> keras.Model:
    """Carry out an exploit after the last epoch in `history`: end the segment's session and start the next
    one's, then the model rebuilt in this process from the new segment's hparams, with the donor's weights
    and optimizer state and the segment's learning rate."""
    segment = exploit.segment
    logger.info("%s exploits member %s after epoch %d: loading %s, then segment %d with hparams %s",
                assignment.trial_name, segment.parent_number, len(history) - 1, exploit.snapshot, segment.segment,
                segment.hparams)
    if isinstance(session, population.MemberSessions):
        with _log_files.io_failures(_SESSION.format(assignment.logdir)):
            session.hand_over(segment, history, assignment.objective.metric)
    with _scope(strategy):
        model = _compiled_model(assignment, segment.hparams, architecture, steps_per_epoch)
        _build(model, train)
        population.load_donor_snapshot(model, exploit, assignment.train.epochs, steps_per_epoch, architecture)
    return model


def distribution_hparams(assignment: Assignment) -> dict[str, int]:
    """`replicas` and `global_batch_size` for a trial of more than one GPU, logged with its hparams; {} for one."""
    replicas = assignment.train.gpus_per_trial
    if replicas == 1:
        return {}
    return {REPLICAS: replicas, GLOBAL_BATCH_SIZE: _batch_size(assignment) * replicas}


def distribution_strategy(replicas: int) -> tf.distribute.Strategy | None:
    """MirroredStrategy over the first `replicas` GPUs this process sees (else its CPU devices); None for one.

    RetryableError when there are fewer: this worker was not made for such trials (started without
    --gpus-per-trial), and a worker that was can take the trial.
    """
    if replicas == 1:
        return None
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    if len(devices) < replicas:
        kind = "GPU" if gpus else "CPU device"
        raise RetryableError(f"train.gpus_per_trial is {replicas}, but this worker sees {len(devices)} {kind}(s); "
                             f"start workers with --gpus-per-trial {replicas} (on a CPU, --cpu-devices {replicas})")
    names = tuple(device.name for device in devices[:replicas])
    if names not in _STRATEGIES:
        _STRATEGIES[names] = tf.distribute.MirroredStrategy(devices=list(names))
    return _STRATEGIES[names]


_STRATEGIES: dict[tuple[str, ...], tf.distribute.Strategy] = {}
"""One MirroredStrategy per set of devices for the life of the process, shared by its trials. Its
all-reduces are collective ops numbered by the strategy; a second strategy over the same devices numbers
its own from the start again, and TensorFlow's runtime, which remembers the first's, then fails the next
trial's step with "Shape mismatch in the collective instance"."""


def _batch_size(assignment: Assignment) -> int:
    """The batch size per replica: the `batch_size` hparam, else train.batch_size."""
    return int(assignment.hparams.get("batch_size", assignment.train.batch_size))


def _scope(strategy: tf.distribute.Strategy | None) -> AbstractContextManager[Any]:
    """The strategy's scope, in which the variables made are mirrored on its replicas; nothing for one device."""
    return strategy.scope() if strategy is not None else nullcontext()


class _KeptChains:
    """What the errors leaving `fit` were raised from, which Keras drops: it re-raises them `from None`.

    The worker's callbacks are wrapped to note the cause of what they raise (the refused call behind a
    TrialAbandonedError, say); sweeper's writes raise InfrastructureError from the I/O error inside an
    `except`, so that error is also its context. `restore` puts the cause back: the caller gets the error
    as it was raised.
    """

    def __init__(self) -> None:
        self._kept: list[tuple[BaseException, BaseException | None, bool]] = []

    def keeping(self, function: Callable[..., _T]) -> Callable[..., _T]:
        def call(*args: Any) -> _T:
            try:
                return function(*args)
            except BaseException as error:
                self._kept.append((error, error.__cause__, error.__suppress_context__))
                raise

        return call

    def restore(self, error: BaseException) -> None:
        for kept, cause, suppress_context in self._kept:
            if kept is error:
                error.__cause__, error.__suppress_context__ = cause, suppress_context
                return
        if isinstance(error, InfrastructureError) and error.__cause__ is None:
            error.__cause__ = error.__context__


def _build(model: keras.Model, train: Any) -> None:
    # A checkpoint loads only into a model with its variables; a plugin's subclassed model may get
    # them only when first called.
    if not model.built:
        features = next(iter(train.take(1)))[0]
        model(features, training=False)


def _trial_seed(assignment: Assignment) -> int | None:
    # An hparam named `seed` wins over train.seed, so a sweep can search over seeds.
    if "seed" in assignment.hparams:
        return int(assignment.hparams["seed"])
    return assignment.train.seed


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Python, NumPy and TensorFlow seeded, and TensorFlow's ops deterministic, for one trial.

    Without deterministic ops a seed fixes the initial weights and the shuffling, but not the order in
    which parallel kernels (on GPUs, cuDNN's and atomic adds) sum floats, so two runs could drift apart.
    """
    if seed is None:
        yield
        return
    keras.utils.set_random_seed(seed)
    was_deterministic = _op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        # Deterministic kernels can be slower (on GPUs), so an unseeded trial after this one must not pay.
        if not was_deterministic:
            _disable_op_determinism()


def _op_determinism_enabled() -> bool:
    # TensorFlow's public API can only turn determinism on; the switch back lives in its config module.
    from tensorflow.python.framework import config as tf_config

    check = getattr(tf_config, "is_op_determinism_enabled", None)
    return bool(check()) if check is not None else True


def _disable_op_determinism() -> None:
    from tensorflow.python.framework import config as tf_config

    disable = getattr(tf_config, "disable_op_determinism", None)
    if disable is not None:
        disable()


@contextmanager
def _trial_dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Keras's global dtype policy "mixed_float16" for this trial only; the previous one is restored after.

    The policy is global in Keras, so it is restored even when the trial fails: a worker's next trial
    must not inherit float16 layers.
    """
    previous = keras.mixed_precision.dtype_policy()
    if mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


# -- losses and metrics ----------------------------------------------------------------------------

def _one_hot(y_true: Any, y_pred: Any) -> Any:
    # Datasets hold integer class labels; losses and metrics over whole distributions want one-hot rows.
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)


class _OnOneHotLabels(keras.losses.Loss):
    """A Keras loss over class distributions (categorical cross-entropy, KL, ...) fed integer labels.

    The labels become one-hot inside the loss rather than in the data, so the sparse metrics that may
    sit beside it (accuracy, top-k) keep the integer labels they need.
    """

    def __init__(self, loss: Callable[[Any, Any], Any], name: str):
        super().__init__(name=name)
        self._loss = loss

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self._loss(_one_hot(y_true, y_pred), y_pred)


class _FromIntegerLabels:
    """Mixin: a metric over one-hot labels (AUC, precision, recall), updated with integer labels.

    Over a softmax output it is micro-averaged: every (example, class) pair counts one-vs-rest.
    """

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().update_state(_one_hot(y_true, y_pred), y_pred, sample_weight)  # type: ignore[misc]


class _AUC(_FromIntegerLabels, keras.metrics.AUC):
    pass


class _Precision(_FromIntegerLabels, keras.metrics.Precision):
    pass


class _Recall(_FromIntegerLabels, keras.metrics.Recall):
    pass


_LOSSES: dict[str, Callable[[], keras.losses.Loss]] = {
    "sparse_categorical_crossentropy": lambda: keras.losses.SparseCategoricalCrossentropy(),
    "categorical_crossentropy": lambda: _OnOneHotLabels(keras.losses.categorical_crossentropy,
                                                        "categorical_crossentropy"),
    "categorical_focal_crossentropy": lambda: _OnOneHotLabels(keras.losses.categorical_focal_crossentropy,
                                                              "categorical_focal_crossentropy"),
    "kl_divergence": lambda: _OnOneHotLabels(keras.losses.kl_divergence, "kl_divergence"),
    "poisson": lambda: _OnOneHotLabels(keras.losses.poisson, "poisson"),
}

# Each metric is named explicitly: Keras then logs it under exactly the name the spec checked
# (`TrainSettings.metric_names()`), never with a suffix like "auc_1".
_METRICS: dict[str, Callable[[], keras.metrics.Metric]] = {
    "accuracy": lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
    "sparse_categorical_accuracy": lambda: keras.metrics.SparseCategoricalAccuracy(name="sparse_categorical_accuracy"),
    "sparse_top_k_categorical_accuracy": lambda: keras.metrics.SparseTopKCategoricalAccuracy(
        name="sparse_top_k_categorical_accuracy"),
    "sparse_categorical_crossentropy": lambda: keras.metrics.SparseCategoricalCrossentropy(
        name="sparse_categorical_crossentropy"),
    "auc": lambda: _AUC(name="auc"),
    "precision": lambda: _Precision(name="precision"),
    "recall": lambda: _Recall(name="recall"),
}

# Per-epoch values that get better as they fall; every other metric gets better as it rises.
_MINIMIZED = frozenset({"loss", "sparse_categorical_crossentropy", "learning_rate"})

if set(_LOSSES) != set(LOSSES) or set(_METRICS) != set(METRICS):
    raise ImportError(f"the runner's losses {sorted(_LOSSES)} and metrics {sorted(_METRICS)} do not match the "
                      f"spec's {sorted(LOSSES)} and {sorted(METRICS)}")


def build_loss(name: str) -> keras.losses.Loss:
    """The Keras loss `train.loss` names, taking the datasets' integer labels."""
    try:
        return _LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; allowed losses: {', '.join(_LOSSES)}") from None


def build_metrics(names: list[str]) -> list[keras.metrics.Metric]:
    """The Keras metrics `train.metrics` names, each logged under its own name (val_<name> for validation)."""
    unknown = [name for name in names if name not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; allowed metrics: {', '.join(_METRICS)}")
    return [_METRICS[name]() for name in names]


# -- class weights, early stopping, the objective ----------------------------------------------------

def class_weights(setting: Mapping[int, float] | str | None, data: TrainingData) -> dict[int, float] | None:
    """Keras's `class_weight` for `train.class_weight`: a weight for every class index, or None.

    A mapping may leave classes out (they keep weight 1); "balanced" weighs by the training labels.
    """
    if setting is None:
        return None
    num_classes = data.info.num_classes
    if setting == "balanced":
        return balanced_class_weights(data.train_labels(), num_classes)
    if isinstance(setting, str):
        raise ValueError(f"class_weight must be a mapping {{class index: weight}} or 'balanced', but got {setting!r}")
    outside = sorted(int(label) for label in setting if not 0 <= int(label) < num_classes)
    if outside:
        raise ValueError(f"class_weight names class {outside[0]}, but the dataset's classes are 0 to "
                         f"{num_classes - 1}")
    # Keras looks a weight up for every label, so every class index needs one.
    return {label: float(setting.get(label, 1.0)) for label in range(num_classes)}


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n_samples / (n_classes * count) per class, like scikit-learn's compute_class_weight("balanced").

    n_classes counts the classes present in `labels`; a class absent from them weighs no training
    example, and gets 1.0 only because Keras wants a weight for every index.
    """
    labels = np.asarray(labels, dtype="int64")
    if labels.size == 0:
        raise ValueError("class_weight 'balanced' needs training labels, but there are none")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class labels must be 0 to {num_classes - 1}, but the training labels range from "
                         f"{labels.min()} to {labels.max()}")
    counts = np.bincount(labels, minlength=num_classes)
    present = int(np.count_nonzero(counts))
    return {label: float(len(labels) / (present * count)) if count else 1.0 for label, count in enumerate(counts)}


def _early_stopping(settings: EarlyStopping | None) -> list[keras.callbacks.Callback]:
    if settings is None:
        return []
    # Explicit, not Keras's "auto": auto cannot tell the direction of learning_rate or of our wrappers.
    mode = "min" if settings.monitor.removeprefix("val_") in _MINIMIZED else "max"
    return [keras.callbacks.EarlyStopping(monitor=settings.monitor, patience=settings.patience,
                                          min_delta=settings.min_delta, mode=mode,
                                          restore_best_weights=settings.restore_best_weights)]


def _objective_epoch(objective: Objective, history: list[dict[str, float]]) -> int:
    """The epoch whose metrics are the trial's result: the last one, or the best one by the goal.

    Ties go to the earlier epoch; NaN values never win (a diverged epoch is no one's best).
    """
    last = len(history) - 1
    if objective.epoch == "last":
        return last
    best: int | None = None
    for epoch, metrics in enumerate(history):
        value = metrics.get(objective.metric, math.nan)
        if math.isnan(value):
            continue
        if best is None or objective.better(value, history[best][objective.metric]):
            best = epoch
    return best if best is not None else last


def _session_status(stopped_by: str | None) -> SessionStatus | None:
    if stopped_by == Action.stop:
        # The worker hands the trial back for a retry, which rewrites this folder: no end now, since
        # TensorBoard would keep the first end it reads.
        return None
    if stopped_by in (Action.prune, Action.cancel):
        # A pruned trial ends as aborted like a cancelled one: TensorBoard's session statuses (UNKNOWN,
        # SUCCESS, FAILURE, RUNNING as of 2.21) have none for "stopped on purpose", and each of the others
        # would mislead (a success counted as a full run, a failure as a crash, running as never ending).
        # Its `pruned_at_epoch` scalar is what tells it from a cancelled trial in the dashboard.
        return SessionStatus.aborted
    return SessionStatus.success


def _require_objective(metric: str, metrics: dict[str, float]) -> None:
    if metric not in metrics:
        raise ValueError(f"objective metric {metric!r} is not among the trial's metrics; "
                         f"available: {', '.join(sorted(metrics))}")


# -- callbacks -------------------------------------------------------------------------------------

def _learning_rate(model: keras.Model) -> float:
    # The rate the optimizer will use next, the same value Keras's TensorBoard callback logs as
    # epoch_learning_rate (it evaluates a schedule at the optimizer's step count). A mixed-precision
    # LossScaleOptimizer passes its inner optimizer's rate through. Through numpy: under MirroredStrategy the
    # rate is a MirroredVariable, which float() refuses.
    return float(ops.convert_to_numpy(model.optimizer.learning_rate))


class _LearningRateInLogs(keras.callbacks.Callback):
    """Puts the learning rate into each epoch's logs, so EarlyStopping can watch it like any metric."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = _learning_rate(self.model)


class _EpochReporter(keras.callbacks.Callback):
    """Hands each epoch's metrics (and the learning rate and the model's parameter count) to the worker and
    obeys its answer.

    The parameter count joins the reported metrics only, not Keras's logs: Keras's TensorBoard callback
    would log it again every epoch, and it never changes.

    `history` starts with the metrics of the epochs a checkpoint restored: only the epochs this
    attempt trains are handed on, but the trial's result is judged over all of them. An error from the
    worker (`TrialAbandonedError` among them) propagates out of `fit` before the later callbacks log
    or save the epoch.

    An exploit answer (to a PBT member in `segment`) ends the `fit` after this epoch, and the runner takes
    it (`take_exploit`) to carry it out before training on.
    """

    def __init__(self, on_epoch_end: EpochCallback, objective_metric: str, epochs: int,
                 history: list[dict[str, float]], pbt: PbtMember | None = None, segment: PbtSegment | None = None):
        super().__init__()
        self._on_epoch_end = on_epoch_end
        self._objective_metric = objective_metric
        self._epochs = epochs
        self._first_epoch = len(history)
        self._pbt = pbt
        self.segment = segment
        """The PBT segment in force, which an exploit must follow; None for a trial of any other sweep."""
        self.history = history
        self.stopped_by: Action | None = None
        self.exploit: Exploit | None = None
        """The exploit answered after the last epoch, until the runner takes it."""

    def take_exploit(self) -> Exploit | None:
        exploit, self.exploit = self.exploit, None
        return exploit

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        metrics["learning_rate"] = _learning_rate(self.model)
        metrics[NUM_PARAMS] = float(self.model.count_params())
        if epoch == self._first_epoch:
            # Fail on the first epoch, not after the whole training, when the objective names no metric.
            _require_objective(self._objective_metric, metrics)
        self.history.append(metrics)
        answer, exploit = _directive(self._on_epoch_end(epoch, dict(metrics)))
        if exploit is not None:
            population.check_exploit(self._pbt, exploit, self.segment, epoch, self._epochs)
            # Ends this `fit` (early stopping's verdict on the member's own weights with it): the runner
            # goes on with the donor's weights from the next epoch.
            self.exploit = exploit
            self.model.stop_training = True
            return
        if answer is Action.stop and (epoch + 1 >= self._epochs or self.model.stop_training):
            # Nothing is left to hand back: that was the last epoch, or early stopping ends training here.
            return
        if answer in _STOP_ACTIONS:
            self.model.stop_training = True
            self.stopped_by = answer


def _directive(answer: Directive | Action | str) -> tuple[Action, Exploit | None]:
    """`on_epoch_end`'s answer as an Action, with the exploit when it is one; ValueError naming what it may answer."""
    if isinstance(answer, Directive):
        return answer.action, answer.exploit
    if answer == Action.exploit:
        raise ValueError("on_epoch_end must answer exploit as a Directive carrying its Exploit (which snapshot, "
                         "which segment), but got the bare action")
    action = _action(answer, "on_epoch_end", [action for action in Action if action is not Action.exploit])
    assert action is not None
    return action, None


def _action(answer: Action | str | None, asked: str, allowed: Sequence[Action | None]) -> Action | None:
    """The worker's answer as an Action, or ValueError naming the answers `asked` may give."""
    if answer is None and None in allowed:
        return None
    if answer is not None and answer in allowed:  # a str compares equal to its StrEnum member
        return Action(answer)
    names = ["None" if name is None else repr(str(name)) for name in allowed]
    raise ValueError(f"{asked} must answer {', '.join(names[:-1])} or {names[-1]}, but got {answer!r}")


class _Checkpointing(keras.callbacks.Callback):
    """Saves the trial's checkpoint after each epoch, unless the trial ends with this epoch.

    A trial ends with the epoch when it was the last one, when early stopping ends training there,
    or when the answer was "prune" or "cancel": the worker deletes the checkpoint once the server has
    the end, so saving it would only lengthen the gap before the worker's next trial (a save is some
    40 ms on a CPU). The price: a worker that dies between such an epoch and its report retrains that
    one epoch on retry, from the previous epoch's checkpoint. A "stop" answer keeps every save: the
    trial is handed back.
    """

    def __init__(self, checkpoint: TrialCheckpoint, reporter: _EpochReporter, epochs: int):
        super().__init__()
        self._checkpoint = checkpoint
        self._reporter = reporter
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._reporter.stopped_by in (Action.prune, Action.cancel):
            return
        if self._reporter.exploit is not None:
            # Saved once the donor's weights are loaded: this epoch's own weights must never be what a retry
            # resumes the new segment from. A crash before that save trains the epoch again, and the
            # server answers its report with the same exploit.
            return
        if self._reporter.stopped_by is None and (epoch + 1 >= self._epochs or self.model.stop_training):
            return
        self._checkpoint.save(self.model, self._reporter.history)


class _FailOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras's TerminateOnNaN, failing the trial instead of ending its training as if it had finished.

    A diverged configuration is a result ("loss became NaN"), not a trial to complete with the last
    epoch's metrics, and a batch's NaN ends it at once, before validating a broken model.
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            self.model.stop_training = True
            raise NonFiniteLossError(f"loss became {'NaN' if math.isnan(loss) else 'infinite'} at epoch "
                                     f"{self._epoch} (batch {batch})")


class _Interrupted(Exception):
    """Raised out of `fit` to end it after the current batch, without finishing the epoch."""

    def __init__(self, action: Action):
        super().__init__(action)
        self.action = action


class _Interruptible(keras.callbacks.Callback):
    """Asks `interrupt` after every batch, so a cancel takes effect within a batch, not an epoch.

    It raises rather than setting `model.stop_training`: Keras would still validate and end the cut
    epoch, logging and checkpointing a partial one.
    """

    def __init__(self, interrupt: Interrupt):
        super().__init__()
        self._interrupt = interrupt

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.check()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.check()  # validating a big set can take a while too

    def check(self) -> None:
        """Raise `_Interrupted` when `interrupt` answers stop or cancel."""
        action = _action(self._interrupt(), "an interrupt", (None, Action.cancel, Action.stop))
        if action is not None:
            raise _Interrupted(action)


class _LiveTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback, flushed after every epoch so the dashboards update while training.

    Its writers otherwise flush every two minutes, and a sweep's trials are often shorter than that.
    The graph is not written: one per trial is noise in a sweep and costs time and disk.

    An epoch is written only at its end, once the worker has taken its metrics: the scalars Keras writes
    when validation ends (`evaluation_<metric>_vs_iterations`) wait until then, so an epoch whose trial
    was abandoned at its report leaves nothing in the logs. A failure to write raises InfrastructureError.
    """

    def __init__(self, log_dir: str):
        super().__init__(log_dir=log_dir, write_graph=False)
        self._validation_logs: dict[str, Any] | None = None
        self._action = f"write the trial's TensorBoard logs in {log_dir}"

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        with _log_files.io_failures(self._action):  # opens the train/ writer
            wait_to_write_after_earlier_files(self.log_dir)  # the earlier segments' or attempts' files
            super().on_train_begin(logs)

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        # The optimizer's step count, which Keras takes as these scalars' step, stays put until the
        # epoch's end: no training step comes between.
        self._validation_logs = dict(logs or {})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        with _log_files.io_failures(self._action):
            if self._validation_logs is not None:
                super().on_test_end(self._validation_logs)
                self._validation_logs = None
            super().on_epoch_end(epoch, logs)
            # `_writers` is the callback's own cache of the writers it has opened (Keras 3).
            for writer in getattr(self, "_writers", {}).values():
                writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        with _log_files.io_failures(self._action):  # closes the writers
            super().on_train_end(logs)

    def close(self) -> None:
        """Close the writers, which `fit` leaves open when an exception ends it (a retry rewrites the files)."""
        with _log_files.io_failures(self._action):
            for writer in getattr(self, "_writers", {}).values():
                writer.close()
