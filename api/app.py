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
from api.reaper import LeaseReaper
from api.repository import LeasePolicy, PlanCache, Repository
from api.routers import health, sweeps, trials, workers
from api.settings import Settings

API_PREFIX = "/api/v1"


def create_app(settings: Settings) -> FastAPI:
    """A ready app with its own engine (tables created) and caches.

    While it runs (its lifespan), a background thread reaps expired leases; shutting down stops the
    thread, then disposes of the engine.
    """
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
        policy=LeasePolicy(lease=timedelta(seconds=settings.lease_seconds),
                           heartbeat=timedelta(seconds=settings.heartbeat_interval)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with context.sessions() as session:
            Repository(session, context.policy, context.plans).renew_running_leases()
        reaper = LeaseReaper(context.sessions, context.policy, context.plans, interval=settings.reap_interval_seconds)
        app.state.reaper = reaper
        reaper.start()
        try:
            yield
        finally:
            reaper.stop()
            engine.dispose()

    app = FastAPI(title="sweeper", version=sweeper.__version__, lifespan=lifespan,
                  summary="Hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.")
    app.state.context = context
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sweeps.router, prefix=API_PREFIX)
    app.include_router(trials.router, prefix=API_PREFIX)
    app.include_router(workers.router, prefix=API_PREFIX)
    return app
