"""Storage: every read and write of sweeps, trials and workers, one transaction per public method; no HTTP.

Split by concern: sweeps (api.storage.sweeps), trials and their leases (api.storage.trials), workers
(api.storage.workers), and the reads of the analysis views (api.storage.analysis), over what they share
(api.storage.base). `Repository` is all of them over one session, one per request; a trial's life itself is api.lifecycle, which this layer loads, applies and
stores.
"""

from api.storage.analysis import SweepAnalysis, SweepStudy
from api.storage.base import (LeaseConflictError, LeasePolicy, PlanCache, SweepNotFoundError, SweepPlan,
                              SweepStateError, TrialNotFoundError, TrialNumberNotFoundError)
from api.storage.population import lineage, member as pbt_member
from api.storage.sweeps import (CANCELLED_ON_REQUEST, ObjectiveSeries, SweepStore, SweepSummary, TrialHistory,
                                WorkerWanted)
from api.storage.trials import WORKER_LOST, Claimed, TrialLeases
from api.storage.workers import WorkerState, WorkerStatus, WorkerStore

__all__ = [
    "CANCELLED_ON_REQUEST", "WORKER_LOST", "Claimed", "LeaseConflictError", "LeasePolicy", "ObjectiveSeries",
    "PlanCache", "Repository", "SweepAnalysis", "SweepNotFoundError", "SweepPlan", "SweepStateError", "SweepStudy",
    "SweepSummary", "TrialHistory", "TrialNotFoundError", "TrialNumberNotFoundError", "WorkerState", "WorkerStatus",
    "lineage", "pbt_member", "WorkerWanted",
]


class Repository(SweepStore, TrialLeases, WorkerStore, SweepAnalysis):
    """Sweeps, trials and workers in the database; one per request (it wraps that request's session)."""
