"""Schema migrations: bring any sweeper database to the code's schema, keeping every row.

Alembic's scripts live in `api/migrations/versions`; the server upgrades on start, and `sweeper db
upgrade` does it by hand (for a database shared by several servers, or to see it happen). A database
made before migrations existed (tables, but no `alembic_version`) holds the first revision's schema:
it is stamped so, then upgraded like any other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

__all__ = ["BASE_REVISION", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASE_REVISION = "0001"
"""The schema of sweeper 0.1, which databases from before migrations have."""
# Any constant: every server on one PostgreSQL database takes this lock to migrate, one at a time.
_POSTGRES_LOCK_KEY = 0x5377_6565_7065_72


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision the code expects."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "api/migrations/versions holds no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database (or one from before migrations)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the database to `revision` (default: the code's); returns (revision before, after).

    One transaction on every backend (SQLite and PostgreSQL both run DDL in transactions), so a
    failed migration leaves the database as it was; on PostgreSQL an advisory lock makes servers
    starting together migrate one after another.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
        before = MigrationContext.configure(connection).get_current_revision()
        config = _config(connection)
        if before is None and inspect(connection).has_table("sweeps"):
            command.stamp(config, BASE_REVISION)
            before = BASE_REVISION
        command.upgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None
    return before, after
