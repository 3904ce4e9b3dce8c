"""Typed FastAPI dependencies: the app's context, a session per request, and a repository over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.search.importance import ImportanceCache
from api.storage import LeasePolicy, PlanCache, Repository
from api.settings import Settings


@dataclass(frozen=True)
class AppContext:
    """Everything one app instance owns, built by `create_app` (never at import time)."""

    settings: Settings
    logdir: str
    """settings.logdir made absolute when the app was created (a URL as written), so workers get absolute
    trial folders; see sweeper.log_location."""
    engine: Engine
    sessions: sessionmaker[Session]
    plans: PlanCache
    policy: LeasePolicy
    importances: ImportanceCache = field(default_factory=ImportanceCache)


# These are `async def` although they never wait: FastAPI runs a plain `def` dependency in its thread
# pool, a thread hand-off each (four per request here), which together cost more than a claim's SQL.
# None of them blocks the event loop: a Session connects lazily, in the endpoint's thread, and every
# repository method ends its transaction before returning, so closing the session does no I/O.

async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_session(context: ContextDep) -> AsyncIterator[Session]:
    with context.sessions() as session:
        yield session


# Function scope: the connection goes back to the pool as soon as the endpoint returns.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_repository(session: SessionDep, context: ContextDep) -> Repository:
    return Repository(session, context.policy, context.plans)


RepositoryDep = Annotated[Repository, Depends(get_repository)]
