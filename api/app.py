"""The FastAPI application factory: everything an app needs is built here, per call, from Settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

import sweeper
from sweeper.log_location import resolve_logdir

from api import metrics
from api.auth import AdminDep, TokenGate
from api.db import create_tables, make_engine, make_sessions
from api.deps import AppContext
from api.claims.desk import ClaimDesk
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.openapi import install_openapi
from api.origin_guard import OriginGuard
from api.pareto_logs import ParetoLogs
from api.reaper import LeaseReaper
from api.storage import LeasePolicy, PlanCache, Repository
from api.routers import analysis, health, session, sweeps, tensorboard, trials, web, workers
from api.schemas import COMMON_ERRORS
from api.security_headers import SecurityHeaders
from api.settings import Settings
from api.tensorboards import TensorBoards
from api.claims.lane import WorkerLane

API_PREFIX = "/api/v1"


def create_app(settings: Settings) -> FastAPI:
    """A ready app with its own engine (tables created) and caches.

    While it runs (its lifespan), a background thread reaps expired leases; shutting down stops the
    thread, then disposes of the engine.
    """
    engine = make_engine(settings.database_url)
    create_tables(engine)
    # Made absolute now (a URL is kept as written): workers may run in another folder, and trial
    # folders must not move if the server's working directory changes later.
    logdir = resolve_logdir(settings.logdir)
    context = AppContext(
        settings=settings,
        logdir=logdir,
        engine=engine,
        sessions=make_sessions(engine),
        plans=PlanCache(),
        policy=LeasePolicy(lease=timedelta(seconds=settings.lease_seconds),
                           heartbeat=timedelta(seconds=settings.heartbeat_interval), logdir=logdir),
    )
    desk = ClaimDesk(context.sessions, context.policy, context.plans)
    tensorboards = TensorBoards(context.logdir, idle_seconds=settings.tensorboard_idle_seconds,
                                max_running=settings.max_tensorboards)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with context.sessions() as session:
            Repository(session, context.policy, context.plans).renew_running_leases()
        reaper = LeaseReaper(context.sessions, context.policy, context.plans, interval=settings.reap_interval_seconds)
        app.state.reaper = reaper
        reaper.start()
        pareto_logs = ParetoLogs(context.sessions, context.logdir)
        app.state.pareto_logs = pareto_logs
        pareto_logs.start()
        tensorboards.start()
        try:
            yield
        finally:
            await tensorboards.aclose()
            pareto_logs.stop()
            reaper.stop()
            desk.close()
            engine.dispose()

    # FastAPI's OpenTelemetry hooks off: they read the environment on every request (a tenth of a claim's
    # cost), and the server's own metrics are Prometheus's (GET /metrics).
    app = FastAPI(title="sweeper", version=sweeper.__version__, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  summary="Hyperparameter sweeps for tf.keras, with TensorBoard HParams as the result view.")
    app.state.context = context
    app.state.tensorboards = tensorboards
    app.state.desk = desk
    metrics.install_metrics(app, context.sessions, context.policy.lease)
    install_error_handlers(app)
    # Claims and completions skip the router (api.claims.lane), inside the gate and the size limit.
    app.add_middleware(WorkerLane, prefix=API_PREFIX)
    # Default-deny in front of everything: a token is needed except on the public routes (api.auth).
    app.add_middleware(TokenGate, settings=settings)
    # In front of the gate: a request another web page could forge (a cross-origin POST riding the login
    # cookie, or none needed without tokens; a Host a rebound DNS name sends) is refused (api.origin_guard).
    app.add_middleware(OriginGuard, settings=settings)
    # No body over the limit reaches the gate or any route, whatever its Content-Length says.
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    # Outermost: every answer, refusals included, gets the security headers (api.security_headers).
    app.add_middleware(SecurityHeaders, docs_paths=(app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url))
    app.include_router(health.router)
    app.include_router(session.router, prefix=API_PREFIX)
    app.include_router(sweeps.router, prefix=API_PREFIX, dependencies=[AdminDep])
    app.include_router(analysis.router, prefix=API_PREFIX, dependencies=[AdminDep])
    app.include_router(trials.router, prefix=API_PREFIX,  # its routes declare worker or admin one by one
                       responses=COMMON_ERRORS)
    app.include_router(workers.router, prefix=API_PREFIX, dependencies=[AdminDep])
    app.include_router(tensorboard.router, prefix=API_PREFIX, dependencies=[AdminDep])
    app.include_router(tensorboard.proxy_router, dependencies=[AdminDep])
    app.include_router(web.registry_router, prefix=API_PREFIX, dependencies=[AdminDep])
    app.include_router(web.router)
    app.include_router(metrics.router, dependencies=[AdminDep])
    install_openapi(app)
    return app
