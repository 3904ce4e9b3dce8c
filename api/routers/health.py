"""Liveness."""

from __future__ import annotations

from fastapi import APIRouter

from api.json_guard import StrictJSONRoute
from api.schemas import Health

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and serving requests."""
    return Health()
