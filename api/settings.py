"""The server's settings: defaults for a laptop, overridable by `SWEEPER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What the server listens on, where it keeps its state, and how it treats silent workers.

    Built explicitly (`Settings(...)`) by the CLI and by tests; nothing creates one at import time.
    """

    model_config = SettingsConfigDict(env_prefix="SWEEPER_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65_535)] = 8000
    """0 picks a free port (read it back from the running server)."""
    database_url: Annotated[str, Field(min_length=1)] = "sqlite:///sweeper.db"
    logdir: Path = Path("runs")
    """TensorBoard logs: one folder per sweep, one per trial inside it."""
    lease_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 60.0
    """A running trial whose worker stays silent this long is given to another worker."""
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 3
    """A trial that failed (retryably) or lost its worker this many times fails for good."""
    max_sweep_trials: Annotated[int, Field(ge=1, le=2**62)] = 1_000_000
    """The largest sweep accepted; a bigger grid is almost always a typo, and would never finish."""

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        # Fail at start-up, not on the first request, when the URL is not one SQLAlchemy can parse.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url)
        except ArgumentError as error:
            raise ValueError(f"database_url must be a SQLAlchemy URL like sqlite:///sweeper.db: {error}") from None
        return url
