"""Store: what every part of the outbox shares: the engine, the compiled statements,
transactions, and the one place where driver errors become DatabaseUnavailable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.db.engine import sqlite_path
from service.db.schema import attempts_table, messages_table
from service.db.statements import (
    ATTEMPT_COLUMNS,
    CLAIM_NAMES,
    INSERT_COLUMNS,
    OUTCOME_NAMES,
    DriverStatement,
    claim_statement,
    outcome_statement,
)
from service.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["DatabaseErrors", "Store"]


class DatabaseErrors:
    """`with` it: driver errors inside become DatabaseUnavailable; integrity errors
    pass (the callers that expect one catch it). A plain class rather than a
    generator-based context manager, because the accept path enters it per batch."""

    def __init__(self, dbapi: Any) -> None:
        self._dbapi = dbapi

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, IntegrityError | self._dbapi.IntegrityError):
            return
        if isinstance(exc, DBAPIError):
            raise DatabaseUnavailable(f"database error: {exc.orig!r}") from exc
        if isinstance(exc, self._dbapi.Error):
            # After the pool invalidated its connections (a server restart), the
            # reconnect's failure reaches us unwrapped.
            raise DatabaseUnavailable(f"database error: {exc!r}") from exc
        if isinstance(exc, sa.exc.TimeoutError):  # every pooled connection busy
            raise DatabaseUnavailable(f"database busy: {exc}") from exc


class Store:
    """The plumbing under Outbox. Thread-safe (one engine, pooled).

    Every database error surfaces as DatabaseUnavailable (integrity errors
    excepted: the callers that expect one catch it), so callers handle one
    exception whether SQLite is locked, the disk is full or PostgreSQL is gone.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = 60.0,
        instance: str | None = None,
    ) -> None:
        self.engine = engine
        # Who this process's claims are made under (INSTANCE_ID): the sync rows it
        # inserts in `sending` carry it, so that its next start finds them.
        self.instance = instance
        self._clock = clock
        # A synchronous row is inserted in `sending` with this lease (renewed by
        # record_attempt), so a dead process's sync rows are found and failed.
        self._lease_seconds = lease_seconds
        self._postgres = engine.dialect.name == "postgresql"
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._sqlite_path = sqlite_path(engine)
        self._sqlite_inode: int | None = None
        # The hot paths' statements, compiled once and run on the DBAPI cursor: the
        # accept path's INSERT, the delivery path's claim (one per batch size, made
        # when first needed), outcome UPDATE and attempt INSERT.
        dialect = engine.dialect
        self._insert = DriverStatement(
            messages_table.insert(), dialect, INSERT_COLUMNS, column_keys=INSERT_COLUMNS
        )
        self._claims: dict[int, DriverStatement] = {}
        self._outcome = DriverStatement(outcome_statement(), dialect, OUTCOME_NAMES)
        self._attempt_insert = attempts_table.insert()
        self._attempt = DriverStatement(
            self._attempt_insert, dialect, ATTEMPT_COLUMNS, column_keys=ATTEMPT_COLUMNS
        )
        self._dbapi: Any = dialect.loaded_dbapi
        self._unavailable_on_error = DatabaseErrors(self._dbapi)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction through SQLAlchemy."""
        with self._unavailable_on_error, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._unavailable_on_error, self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _driver(self) -> Iterator[Any]:
        """A DBAPI cursor in one transaction on a pooled connection, committed at the end."""
        with self._unavailable_on_error:
            conn = self.engine.raw_connection()
            try:
                cursor = conn.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
                conn.commit()
            finally:
                # Back to the pool, which rolls back an unfinished transaction, or drops
                # the connection if even that fails (a dead server connection), as it
                # does for SQLAlchemy's own statements.
                conn.close()

    def _claim_for(self, count: int) -> DriverStatement:
        statement = self._claims.get(count)
        if statement is None:
            names = [*CLAIM_NAMES, *(f"b_id{n}" for n in range(count))]
            statement = DriverStatement(
                claim_statement(postgres=self._postgres, count=count),
                self.engine.dialect,
                names,
            )
            self._claims[count] = statement
        return statement

    def _check_sqlite_file(self) -> None:
        """Refuse to accept into a SQLite file that was deleted or replaced.

        Pooled connections keep writing to an unlinked file without error, and
        those commits would be lost for good: a 202 must not depend on that.
        One stat() per insert (about a microsecond) buys the check.
        """
        if self._sqlite_path is None:
            return
        try:
            inode = self._sqlite_path.stat().st_ino
        except OSError as exc:
            raise DatabaseUnavailable(f"database file is gone: {exc.strerror}") from exc
        if self._sqlite_inode is None:
            self._sqlite_inode = inode
        elif inode != self._sqlite_inode:
            raise DatabaseUnavailable("database file was replaced while in use")

    def create_schema(self) -> None:
        """Create or upgrade the schema through the migrations (service.migrations).

        The one way a schema is made, in tests and in production alike, so the
        tests exercise the migrations the deployments run.
        """
        # Imported here: alembic is only needed by whoever creates the schema.
        from service.migrations import migrate

        with self._unavailable_on_error:
            migrate(self.engine)
        if self._sqlite_path is not None:
            self._sqlite_inode = self._sqlite_path.stat().st_ino
