"""The server's settings: defaults for a laptop, overridable by `SWEEPER_*` environment variables."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePath
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sweeper.log_location import is_url

DEFAULT_HEARTBEAT_SECONDS = 10.0
HEARTBEATS_PER_LEASE = 6
"""The default heartbeat's share of the lease."""
MIN_HEARTBEATS_PER_LEASE = 2
"""The fewest heartbeats a lease must outlast."""
MIN_TOKEN_CHARS = 16
TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9._~+/=-]+")
"""RFC 6750's bearer-token characters: what `secrets.token_urlsafe`, base64 and hex produce, and what
travels unchanged in a header and a cookie."""
MAKE_A_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
_URL_LOCATION = re.compile(r"^[^:]+:///?[^/]")
"""A logdir URL names something (a bucket, a host, or for file:/// a root) after its scheme."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""The names a server always answers to, on any port (besides its bind address and allowed_hosts)."""
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


class Settings(BaseSettings):
    """What the server listens on, where it keeps its state, and how it treats silent workers.

    Built explicitly (`Settings(...)`) by the CLI and by tests; nothing creates one at import time.
    """

    # hide_input_in_errors: a refused token must not be printed with the error that refuses it.
    model_config = SettingsConfigDict(env_prefix="SWEEPER_", extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    """Any address but a loopback one needs admin_token: whoever reaches the server can run sweeps on its workers."""
    port: Annotated[int, Field(ge=0, le=65_535)] = 8000
    """0 picks a free port (read it back from the running server)."""
    database_url: Annotated[str, Field(min_length=1)] = "sqlite:///sweeper.db"
    logdir: Path | str = Path("runs")
    """TensorBoard logs and checkpoints, one folder per sweep and one per trial inside it: a local folder
    (a Path), or an object-store URL like gs://bucket/prefix (a str, kept as written), which the server,
    the workers and TensorBoard read and write through TensorFlow's gfile. Workers must reach it too:
    a folder shared by every host, mounted at the same path, or the URL (see docs/deploy.md)."""
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
    max_body_bytes: Annotated[int, Field(ge=1024, le=2**31)] = 1_048_576
    """The largest request body accepted (413 beyond it): a spec is a few kilobytes."""
    admin_token: SecretStr | None = None
    """The token for everything: sweeps, the web page, metrics, TensorBoard. None: auth is off (loopback only)."""
    worker_token: SecretStr | None = None
    """The token for the worker protocol only (claim a trial, report on it); needs admin_token."""
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """More names the server answers to in the Host header (SWEEPER_ALLOWED_HOSTS: comma-separated), besides
    its bind address, localhost, 127.0.0.1 and ::1, on any port. Without a token, a request for any other
    name gets 400 (a web page may have pointed a DNS name of its own at this machine); with tokens, any
    name is answered unless some are listed here (see api.origin_guard)."""
    tensorboard_idle_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 600.0
    """A sweep's TensorBoard (started on demand by the web page) is stopped after this long without a request
    through the server; the next request starts it again."""
    max_tensorboards: Annotated[int, Field(ge=1, le=1000)] = 3
    """The most sweep TensorBoards running at once (each imports TensorFlow: a few hundred megabytes).
    Starting another stops the least recently used one not in use, or is refused (503) when all are."""
    session_hours: Annotated[float, Field(gt=0, le=366 * 24)] = 12.0
    """How long a login of the web page lasts: its session is refused after this long (and at once when
    logged out, or when the token that logged in is no longer configured)."""

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

    @field_validator("logdir", mode="before")
    @classmethod
    def _folder_or_url(cls, logdir: object) -> object:
        # A URL must stay a str: a Path would fold "gs://bucket" into "gs:/bucket".
        if isinstance(logdir, (str, PurePath)) and not is_url(logdir):
            if not str(logdir).strip():
                raise ValueError("logdir must name a folder or a URL like gs://bucket/prefix, but it is empty")
            return Path(logdir)
        if isinstance(logdir, str) and not _URL_LOCATION.match(logdir):
            raise ValueError(f"logdir {logdir!r} is a URL, so it must name a bucket or host after its scheme, "
                             f"like gs://bucket/prefix")
        return logdir

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

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_names(cls, hosts: object) -> object:
        names = hosts.split(",") if isinstance(hosts, str) else hosts
        if not isinstance(names, (list, tuple, set, frozenset)):
            return hosts  # the tuple's own validation says what is wrong
        allowed = []
        for entry in names:
            if not isinstance(entry, str):
                raise ValueError(f"must be host names, but got {entry!r}")
            if not entry.strip():
                continue
            name = host_name(entry)
            if not _is_ip(name) and not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{entry.strip()!r} is not a host name or an IP address: name the host alone, "
                                 f"like sweeper.example.org or 10.0.0.7, without a scheme, a port (every port "
                                 f"is accepted) or a path")
            if name not in allowed:
                allowed.append(name)
        return tuple(allowed)

    @field_validator("admin_token", "worker_token")
    @classmethod
    def _guessable_token(cls, token: SecretStr | None) -> SecretStr | None:
        # The token is never echoed: an error message ends up in logs and terminals.
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < MIN_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters, but got {len(value)}; make one with: "
                             f"{MAKE_A_TOKEN}")
        if not TOKEN_CHARACTERS.fullmatch(value):
            raise ValueError(f"may hold only letters, digits and - . _ ~ + / = (so it travels unchanged in a header "
                             f"and a cookie), but it holds other characters; make one with: {MAKE_A_TOKEN}")
        return token

    @model_validator(mode="after")
    def _tokens_guard_what_they_must(self) -> Settings:
        if self.worker_token is not None and self.admin_token is None:
            raise ValueError("worker_token needs admin_token too: with a worker token alone, the server would "
                             "answer only workers and nobody could create or read a sweep; set admin_token "
                             "(--admin-token or SWEEPER_ADMIN_TOKEN)")
        if (self.worker_token is not None and self.admin_token is not None
                and self.worker_token.get_secret_value() == self.admin_token.get_secret_value()):
            raise ValueError("admin_token and worker_token must differ: every worker machine holds the worker "
                             "token, and must not get admin rights with it")
        if self.admin_token is None and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} is not a loopback address, and no admin_token is set: anyone who "
                             f"can reach this machine could create sweeps that run on your workers and read every "
                             f"result. Set a token (--admin-token or SWEEPER_ADMIN_TOKEN, and --worker-token or "
                             f"SWEEPER_WORKER_TOKEN for the workers; make one with: {MAKE_A_TOKEN}), or bind "
                             f"127.0.0.1")
        return self


def host_name(host: str) -> str:
    """`host` as the Host check compares it: lower case, without IPv6 brackets or a final dot."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.removesuffix(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only ('localhost' counts)."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # another host name: it may resolve to any interface
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
