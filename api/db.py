"""The database engine: SQLite tuned for many workers claiming at once, or any other SQLAlchemy URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from api.models import Base

BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the lock before the request fails with 503 (retryable)."""


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    in_memory = url.database in (None, "", ":memory:")
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if in_memory:
        # One shared connection, or every pooled connection would see its own empty database.
        options["poolclass"] = StaticPool
    elif not url.query.get("uri") and url.database is not None:
        # `--database-url sqlite:///state/sweeper.db` on a fresh machine should just work.
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)
    _use_immediate_transactions(engine, wal=not in_memory)
    return engine


def _use_immediate_transactions(engine: Engine, *, wal: bool) -> None:
    # SQLAlchemy's documented pysqlite recipe: stop the driver from issuing its own (deferred, late)
    # BEGIN and emit BEGIN IMMEDIATE ourselves. Each transaction then takes the write lock up front,
    # so a claim's read-then-update cannot interleave with another's: one writer at a time, and the
    # others wait (busy_timeout) instead of failing with "database is locked" half way through.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                # Readers no longer block the writer; synchronous=NORMAL is the safe pairing for WAL.
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    # Rows stay readable after commit, so routers can serialise what a repository call returned
    # without a second (locking) transaction.
    return sessionmaker(engine, expire_on_commit=False)


def create_tables(engine: Engine) -> None:
    """Create missing tables; schema changes will go through migrations."""
    Base.metadata.create_all(engine)
