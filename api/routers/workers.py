"""Workers: every worker process the server has seen, and what each is doing now."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import RepositoryDep
from api.storage import WorkerState
from api.json_guard import StrictJSONRoute
from api.schemas import COMMON_ERRORS, WorkerPublic, WorkersPublic

router = APIRouter(prefix="/workers", tags=["workers"], route_class=StrictJSONRoute, responses=COMMON_ERRORS)


@router.get("", response_model=WorkersPublic, summary="List workers")
def list_workers(repository: RepositoryDep,
                 limit: Annotated[int, Query(ge=1, le=10_000, description="Page size.")] = 1000,
                 offset: Annotated[int, Query(ge=0, le=2**62, description="Items to skip.")] = 0,
                 state: Annotated[WorkerState | None, Query(description="Only workers in this state.")] = None,
                 ) -> WorkersPublic:
    """Workers by id: host, GPU, state (idle, busy, or lost once silent for the lease TTL), the trial each
    runs, and its latest call; `count` is the total (in that state)."""
    statuses, count = repository.list_workers(limit=limit, offset=offset, state=state)
    return WorkersPublic(data=[WorkerPublic.from_status(status) for status in statuses], count=count)
