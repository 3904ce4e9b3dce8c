"""A PostgreSQL schema of its own for each test, on the server at SWEEPER_TEST_POSTGRES_URL.

Default: the local server CI provides (127.0.0.1:5432, database `test`, trust auth). Where none
answers, tests that need one skip, saying so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import pytest

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("SWEEPER_TEST_POSTGRES_URL", DEFAULT_URL)


@cache
def unavailable_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'sweeper[postgres]')"
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(server_url(), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        return f"no PostgreSQL server answers at {engine.url.render_as_string(hide_password=True)}: " \
               f"{str(error.orig).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@contextmanager
def isolated_schema() -> Iterator[str]:
    """A database URL whose connections see only a new, empty schema; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    require_postgres()
    schema = f"sweeper_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url())
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(server_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
