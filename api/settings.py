"""The server's settings: defaults for a laptop, overridable by `SWEEPER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HEARTBEAT_SECONDS = 10.0
HEARTBEATS_PER_LEASE = 6
"""The default heartbeat's share of the lease."""
MIN_HEARTBEATS_PER_LEASE = 2
"""The fewest heartbeats a lease must outlast."""


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
    """A running trial whose worker stays silent this long is given to another worker (or failed, once the
    sweep's max_attempts are used up); a worker silent this long is shown as lost."""
    heartbeat_seconds: Annotated[float, Field(gt=0, le=24 * 3600)] | None = None
    """How often workers are told to extend their lease. By default a sixth of the lease (10 s for the
    default 60 s), so a worker may miss a few beats (a busy database, a slow epoch end) and keep its trial."""
    reap_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often the server looks for expired leases on its own, so a lost worker's trial is requeued
    (or failed) even when no worker is claiming."""
    max_sweep_trials: Annotated[int, Field(ge=1, le=2**62)] = 1_000_000
    """The largest sweep accepted; a bigger grid is almost always a typo, and would never finish."""

    @property
    def heartbeat_interval(self) -> float:
        """heartbeat_seconds, or its default derived from the lease."""
        if self.heartbeat_seconds is not None:
            return self.heartbeat_seconds
        return min(DEFAULT_HEARTBEAT_SECONDS, self.lease_seconds / HEARTBEATS_PER_LEASE)

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        # With fewer than two beats per lease, one late heartbeat would hand a healthy worker's trial to
        # another worker and cost the trial an attempt.
        if self.lease_seconds < MIN_HEARTBEATS_PER_LEASE * self.heartbeat_interval:
            shortest = MIN_HEARTBEATS_PER_LEASE * self.heartbeat_interval
            raise ValueError(f"lease_seconds ({self.lease_seconds:g}) must last at least {MIN_HEARTBEATS_PER_LEASE} "
                             f"heartbeats ({shortest:g} s with heartbeat_seconds {self.heartbeat_interval:g}), or a "
                             f"worker that misses one beat loses its trial; raise lease_seconds or lower "
                             f"heartbeat_seconds")
        return self

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
