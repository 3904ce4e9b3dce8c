"""The FastAPI application factory: everything an app needs is built here, per call, from Settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

import sweeper

from api.db import create_tables, make_engine, make_sessions
from api.deps import AppContext
from api.errors import install_error_handlers
from api.repository import LeasePolicy, PlanCache
from api.routers import health, sweeps, trials
from api.settings import Settings

API_PREFIX = "/api/v1"


def create_app(settings: Settings) -> FastAPI:
    """A ready app with its own engine (tables created) and caches; disposed when the app shuts down."""
    engine = make_engine(settings.database_url)
    create_tables(engine)
    context = AppContext(
        settings=settings,
        # Made absolute now: workers may run in another folder, and trial folders must not move if
        # the server's working directory changes later.
        logdir=settings.logdir.expanduser().resolve(),
        engine=engine,
        sessions=make_sessions(engine),
        plans=PlanCache(),
        policy=LeasePolicy(lease=timedelta(seconds=settings.lease_seconds), max_attempts=settings.max_attempts),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="sweeper", version=sweeper.__version__, lifespan=lifespan,
                  summary="Hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.")
    app.state.context = context
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sweeps.router, prefix=API_PREFIX)
    app.include_router(trials.router, prefix=API_PREFIX)
    return app
