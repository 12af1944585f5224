"""InstanceLock: held for a process's life, so that no two live processes are one
instance.

At start-up an instance takes back, at once, the claims its previous process left
in `sending` (a crash, or a SIGTERM whose grace period ended mid-send): with
SQLite every such row (one instance per file), with PostgreSQL the rows claimed
under its INSTANCE_ID. That is only safe while nobody else alive can be holding
them, which is what this lock guarantees:

- SQLite: an exclusive `flock` on the database file itself. It does not interact
  with SQLite's own (POSIX) locks, goes away with the process however it dies, and
  leaves no file behind.
- PostgreSQL: a session advisory lock keyed by the INSTANCE_ID, on a connection of
  its own that the process keeps open. The server drops it when that session ends,
  a killed process included.

A second process that finds the lock taken raises InstanceLocked with one line
saying what to change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from service.db.engine import connect_args, sqlite_path
from service.errors import DatabaseUnavailable, InstanceLocked

__all__ = ["InstanceLock", "advisory_key"]

log = logging.getLogger(__name__)

# A namespace for our advisory lock keys, so they do not collide with another
# application's on the same database.
_KEY_PREFIX = b"mail-service instance "


def advisory_key(instance: str) -> int:
    """The bigint PostgreSQL's pg_try_advisory_lock takes, for an instance name."""
    digest = hashlib.sha256(_KEY_PREFIX + instance.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class InstanceLock:
    """`InstanceLock.acquire(database_url, instance)`; `release()` (or `with`) at exit."""

    def __init__(self, release: Any, what: str) -> None:
        self._release = release
        self.what = what

    @classmethod
    def acquire(cls, database_url: str, instance: str) -> InstanceLock:
        url = sa.make_url(database_url)
        if url.get_backend_name() == "sqlite":
            path = sqlite_path(url)
            if path is None:  # in memory: nobody else can open it
                return cls(lambda: None, "an in-memory database")
            return cls._lock_file(path)
        return cls._lock_advisory(url, instance)

    @classmethod
    def _lock_file(cls, path: Path) -> InstanceLock:
        # O_CREAT: a new database file is created here, empty, which SQLite takes
        # as an empty database.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InstanceLocked(
                f"{path} is in use by another mail-service process: one instance per "
                "SQLite file (use PostgreSQL to run several)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Closing the descriptor drops the lock (and, being the same file, any
        # POSIX lock SQLite holds in this process): only at exit, after the engine.
        return cls(lambda: os.close(fd), str(path))

    @classmethod
    def _lock_advisory(cls, url: sa.URL, instance: str) -> InstanceLock:
        engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args(url))
        key = advisory_key(instance)
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            raise DatabaseUnavailable(
                f"cannot reach the database to lock INSTANCE_ID {instance!r}: {exc.orig}"
            ) from exc
        try:
            taken = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
            conn.commit()  # the lock is the session's, not the transaction's
        except BaseException:
            conn.close()
            engine.dispose()
            raise
        if not taken:
            conn.close()
            engine.dispose()
            raise InstanceLocked(
                f"another live process runs as instance {instance!r}: give each instance "
                "its own INSTANCE_ID"
            )

        def release() -> None:
            # Ending the session drops the lock; a session already gone (the server
            # restarted) has nothing left to drop.
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.close()
            engine.dispose()

        return cls(release, f"instance {instance!r}")

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
