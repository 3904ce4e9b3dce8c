"""Prometheus metrics at `GET /metrics`: what the database holds, read at scrape time, and how claims go.

Each app has a registry of its own (tests build many apps in one process, and the global registry
would refuse the second app's metrics). Trials, sweeps and workers are counted by a custom collector
in one grouped statement per scrape, so the numbers can never drift from the database; claims are
counted and timed where they are answered, in the claim route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import String, func, literal, select, type_coerce, union_all
from sqlalchemy.orm import Session, sessionmaker

from sweeper.messages import SweepStatus, TrialState

from api.models import SweepRow, TrialRow, WorkerRow, utcnow
from api.queries import worker_state_expression
from api.storage import WorkerState
from api.schemas import COMMON_ERRORS

CLAIM_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds; a claim is one short transaction, so most fall in the first few buckets, and a queue shows
as a shift to the right."""


class DatabaseCollector(Collector):
    """sweeper_trials{state}, sweeper_sweeps{status} and sweeper_workers{state}, counted at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], lease: timedelta,
                 clock: Callable[[], datetime] = utcnow):
        self._sessions = sessions
        self._lease = lease
        self._clock = clock

    def describe(self) -> list[Metric]:
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._counts()))

    def _counts(self) -> dict[tuple[str, str], int]:
        """(kind, label) -> count, for trials by state, sweeps by status and workers by state, in one statement."""
        worker_state = worker_state_expression(self._clock() - self._lease)
        # Labels read as plain strings: the three columns are of different enum types.
        statement = union_all(
            select(literal("trial"), type_coerce(TrialRow.state, String), func.count()).group_by(TrialRow.state),
            select(literal("sweep"), type_coerce(SweepRow.status, String), func.count()).group_by(SweepRow.status),
            select(literal("worker"), worker_state, func.count()).select_from(WorkerRow).group_by(worker_state),
        )
        with self._sessions() as session, session.begin():
            return {(kind, str(label)): count for kind, label, count in session.execute(statement)}

    @staticmethod
    def _families(counts: dict[tuple[str, str], int]) -> Iterator[GaugeMetricFamily]:
        # Every label value is present, zeros included, so a dashboard's series never vanish.
        for name, kind, label, values, documentation in (
                ("sweeper_trials", "trial", "state", TrialState, "Trials by state."),
                ("sweeper_sweeps", "sweep", "status", SweepStatus, "Sweeps by status."),
                ("sweeper_workers", "worker", "state", WorkerState,
                 "Workers by state: idle, busy, or lost (silent for longer than the lease).")):
            family = GaugeMetricFamily(name, documentation, labels=[label])
            for value in values:
                family.add_metric([value.value], counts.get((kind, value.value), 0))
            yield family


class ServerMetrics:
    """One app's metrics and the registry that exports them."""

    def __init__(self, sessions: sessionmaker[Session], lease: timedelta):
        self.registry = CollectorRegistry()
        self.claims = Counter("sweeper_claims", "Claims answered, by result: assigned (a trial) or empty (no work).",
                              labelnames=["result"], registry=self.registry)
        for result in ("assigned", "empty"):
            self.claims.labels(result=result)
        self.claim_latency = Histogram("sweeper_claim_latency_seconds", "How long the server took to answer a claim.",
                                       buckets=CLAIM_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(DatabaseCollector(sessions, lease))

    @contextmanager
    def timing_claim(self) -> Iterator[Callable[[bool], None]]:
        """Time a claim (failed ones too); call the yielded function with whether it assigned a trial."""
        started = time.perf_counter()
        try:
            yield lambda assigned: self.claims.labels(result="assigned" if assigned else "empty").inc()
        finally:
            self.claim_latency.observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def get_metrics(request: Request) -> ServerMetrics:
    metrics: ServerMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[ServerMetrics, Depends(get_metrics)]

router = APIRouter(tags=["metrics"], responses=COMMON_ERRORS)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "The Prometheus text exposition format.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(server_metrics: MetricsDep) -> Response:
    """Trials by state, sweeps by status and workers by state (counted in the database at scrape time), claims
    answered by result, and the claim latency histogram, in Prometheus's text format."""
    return Response(server_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI, sessions: sessionmaker[Session], lease: timedelta) -> ServerMetrics:
    """Give the app its metrics (read by `MetricsDep`); the caller includes `router`."""
    server_metrics = ServerMetrics(sessions, lease)
    app.state.metrics = server_metrics
    return server_metrics
