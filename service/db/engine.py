"""make_engine: the engine for DATABASE_URL, with the pool and SQLite pragmas we rely on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from service.config import Settings

__all__ = ["connect_args", "make_engine", "sqlite_path"]

# SQLite waits this long for a competing writer before giving up with "database
# is locked" (which becomes DatabaseUnavailable, so a 503, not a hung request).
SQLITE_BUSY_TIMEOUT_MS = 5000

# SQLite copies the WAL back into the database (a checkpoint, several ms with its
# fsync) inside whichever commit takes the WAL past wal_autocheckpoint pages: by
# default 1,000, which made one commit in ~150 a request or a delivery stalled for
# milliseconds (/send's p99). The scheduler checkpoints every poll instead
# (Outbox.checkpoint, off the request and delivery paths); a commit still does it
# past this many pages (40 MB of WAL), should the scheduler fall behind.
SQLITE_AUTOCHECKPOINT_PAGES = 10_000

# Connection pool: WORKER_CONCURRENCY for the delivery threads, plus this many
# for the scheduler and the API's requests (each holds a connection only for
# one statement or transaction); overflow absorbs bursts rather than queueing
# them. With several instances on one PostgreSQL, each may open up to
# WORKER_CONCURRENCY + WEB_CONNECTIONS + MAX_OVERFLOW connections: keep the sum
# over the instances under the server's max_connections (100 by default).
WEB_CONNECTIONS = 4
MAX_OVERFLOW = 20
POOL_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5


def make_engine(settings: Settings) -> Engine:
    """Engine for DATABASE_URL; SQLite gets WAL, busy_timeout and SQLITE_SYNCHRONOUS."""
    url = sa.make_url(settings.database_url)
    # Delivery threads, the scheduler and the API's thread pool share the pool;
    # overflow absorbs bursts of requests rather than making them wait.
    pool_size = settings.worker_concurrency + WEB_CONNECTIONS
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=MAX_OVERFLOW,
            # A server restart leaves every pooled connection dead; a ping on
            # checkout (one round trip) replaces them instead of failing the
            # next request or delivery on each of them in turn.
            pool_pre_ping=True,
            # A request must not wait long for a connection: past this it is a 503.
            pool_timeout=POOL_TIMEOUT_SECONDS,
            connect_args=connect_args(url),
        )

    if url.database in (None, "", ":memory:"):
        # One in-memory database shared by every thread (tests and throwaway runs).
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=MAX_OVERFLOW,
            # The connection returned last is taken first: its page cache is the
            # warmest (a /send's insert and its outcome share one), where FIFO hands
            # out the one idle longest.
            pool_use_lifo=True,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
    synchronous = settings.sqlite_synchronous

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers never block the writer; NORMAL survives a process crash,
            # FULL also a power loss (at about half the commit rate).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


def connect_args(url: sa.URL) -> dict[str, Any]:
    """Driver options for a server database: bound how long connecting may take."""
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        # libpq waits for ever by default on an unreachable host; a request
        # should get its 503 instead, and a delivery thread should retry.
        return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return {}


def sqlite_path(engine: Engine | sa.URL) -> Path | None:
    """The database file of a SQLite engine (or URL); None for memory, URI
    filenames and other databases."""
    url = engine if isinstance(engine, sa.URL) else engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("uri") or str(url.database).startswith("file:"):
        return None  # URI filenames (mode=ro and friends): leave them to SQLite
    return Path(str(url.database)).absolute()
