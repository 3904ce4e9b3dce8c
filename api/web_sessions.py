"""The web page's sessions: what its cookie names, kept in the database.

Logging in on the web page opens a session: a random id (`secrets.token_urlsafe(32)`, 256 bits) goes to
the browser in the cookie, and a row goes to the `web_sessions` table with

- the id's SHA-256, never the id itself: whoever reads the database (a backup, a stolen file) finds no
  session to present;
- the role it grants, and when it was created and expires (`session_hours` after the login);
- a fingerprint of the token that logged in: an HMAC, keyed by that token, of the id's hash. The session
  holds only while the server still has that token for its role, so changing a token ends the sessions
  it opened; the fingerprint says nothing about the token without the token.

Logging out deletes the row. Expired rows are refused at once and deleted at the next login. Every
server on one database shares the table, so a session opened on one is good on the others, and a
restart keeps it.

Only the store is here; which role a request has is api.auth's to say.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from api.models import WebSessionRow, utcnow

__all__ = ["MAX_SESSION_ID_CHARS", "StoredSession", "close_session", "find_session", "id_hash", "open_session",
           "token_fingerprint"]

SESSION_ID_BYTES = 32
MAX_SESSION_ID_CHARS = 128
"""A longer cookie is no session of this server: refused before any hashing or lookup."""
_FINGERPRINT_CONTEXT = b"sweeper web session\x00"


@dataclass(frozen=True)
class StoredSession:
    id_hash: str
    role: str
    token_fingerprint: str
    expires_at: datetime


def id_hash(session_id: str) -> str:
    """How a session id is stored: its SHA-256, in hex."""
    return hashlib.sha256(session_id.encode("utf-8", "backslashreplace")).hexdigest()


def token_fingerprint(token: str, session_hash: str) -> str:
    """The HMAC-SHA-256, keyed by `token`, of the session's hash: proof that `token` opened the session."""
    return hmac.new(token.encode("utf-8"), _FINGERPRINT_CONTEXT + session_hash.encode("ascii"),
                    hashlib.sha256).hexdigest()


def open_session(sessions: sessionmaker[Session], *, role: str, token: str, lifetime: timedelta,
                 now: datetime | None = None) -> str:
    """Store a new session for `role`, opened with `token`, and return its id (for the cookie only).

    Expired sessions are deleted on the way: logins are rare, and that keeps the table small.
    """
    now = now or utcnow()
    session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
    digest = id_hash(session_id)
    with sessions.begin() as session:
        session.execute(delete(WebSessionRow).where(WebSessionRow.expires_at <= now))
        session.add(WebSessionRow(id_hash=digest, role=role, token_fingerprint=token_fingerprint(token, digest),
                                  created_at=now, expires_at=now + lifetime))
    return session_id


def find_session(sessions: sessionmaker[Session], session_id: str, now: datetime | None = None) -> StoredSession | None:
    """The live session `session_id` names; None when there is none, or it expired or was closed."""
    if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
        return None
    with sessions.begin() as session:
        row = session.get(WebSessionRow, id_hash(session_id))
        if row is None:
            return None
        stored = StoredSession(id_hash=row.id_hash, role=row.role, token_fingerprint=row.token_fingerprint,
                               expires_at=row.expires_at)
    return stored if stored.expires_at > (now or utcnow()) else None


def close_session(sessions: sessionmaker[Session], session_id: str) -> None:
    """Delete the session `session_id` names (logging out); nothing happens when there is none."""
    if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
        return
    with sessions.begin() as session:
        session.execute(delete(WebSessionRow).where(WebSessionRow.id_hash == id_hash(session_id)))
