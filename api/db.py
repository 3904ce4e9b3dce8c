"""The database engine: SQLite tuned for many workers claiming at once, or any other SQLAlchemy URL."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool


BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the lock before the request fails with 503 (retryable)."""


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    in_memory = url.database in (None, "", ":memory:")
    # Each engine its own queue: two apps in one process (tests) lock each other out through SQLite only.
    queue = type("QueuedSQLiteConnection", (QueuedSQLiteConnection,), {"writers": threading.Lock()})
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "factory": queue}}
    if in_memory:
        # One shared connection, or every pooled connection would see its own empty database.
        options["poolclass"] = StaticPool
    elif not url.query.get("uri") and url.database is not None:
        # `--database-url sqlite:///state/sweeper.db` on a fresh machine should just work.
        path = Path(url.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
    engine = create_engine(url, **options)
    _use_immediate_transactions(engine, wal=not in_memory)
    return engine


def _create_private(path: Path) -> None:
    """Create the database file readable and writable by its owner only, unless it exists.

    It holds every sweep's spec and results; created by SQLite under the usual umask, any local user could
    read it. SQLite gives the WAL and its index the database file's mode. An existing file keeps the mode
    its operator gave it.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


class QueuedSQLiteConnection(sqlite3.Connection):
    """A SQLite connection whose transactions first queue on a Python lock shared by its engine.

    Under BEGIN IMMEDIATE only one transaction writes at a time anyway, but SQLite's busy handler makes
    the others poll with sleeps growing to 100 ms: with dozens of workers claiming at once, most waiters
    sleep long past the moment the lock frees, throughput collapses and latency tails reach seconds.
    Waiting on a Python lock instead wakes the next transaction the moment the previous one commits.
    BEGIN IMMEDIATE and the busy timeout still guard against other processes on the same file.
    """

    writers: ClassVar[threading.Lock]
    """One per engine (a subclass per engine sets it): held from BEGIN IMMEDIATE to COMMIT or ROLLBACK."""
    _queued = False

    def enter_queue(self) -> None:
        """Wait for this engine's other transactions to end; at most the busy timeout, like SQLite would."""
        if not self.writers.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
            raise OperationalError("BEGIN IMMEDIATE", None,
                                   sqlite3.OperationalError("database is locked (waiting for this server's "
                                                            "other transactions)"))
        self._queued = True

    def leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self.writers.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_queue()


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
        queued: QueuedSQLiteConnection = connection.connection.driver_connection
        queued.enter_queue()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            queued.leave_queue()
            raise


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    # Rows stay readable after commit, so routers can serialise what a repository call returned
    # without a second (locking) transaction.
    return sessionmaker(engine, expire_on_commit=False)


def create_tables(engine: Engine) -> None:
    """Bring the database to the code's schema through the migrations (see `api.migrate`), rows kept."""
    from api.migrate import upgrade

    upgrade(engine)
