"""Store: what every part of the outbox shares: the engine, the compiled statements,
transactions, and the one place where driver errors become DatabaseUnavailable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.db.engine import sqlite_path
from service.db.schema import (
    attempts_table,
    events_table,
    message_tags_table,
    messages_table,
    suppressions_table,
)
from service.db.statements import (
    ATTEMPT_COLUMNS,
    CLAIM_NAMES,
    EVENT_COLUMNS,
    FINISH_SYNC_NAMES,
    INSERT_COLUMNS,
    OUTCOME_NAMES,
    SUPPRESSION_COLUMNS,
    TAG_COLUMNS,
    DriverStatement,
    attempt_row,
    claim_statement,
    event_if_recorded_statement,
    event_row,
    finish_sync_statement,
    hard_refusals,
    outcome_statement,
    suppression_insert,
)
from service.errors import DatabaseUnavailable
from service.syntax import suppression_key
from service.types import Outcome

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["DatabaseErrors", "HeldConnection", "Store"]


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


class HeldConnection:
    """One pooled DBAPI connection kept checked out for a stream of small
    transactions (the acceptances: one per message, or per few): no pool checkout,
    reset and, with PostgreSQL, ping per transaction. After an error it goes back
    to the pool (which rolls it back, or drops it if dead) and the next
    transaction checks out another. Thread-safe; close() returns it."""

    def __init__(self, engine: Engine, errors: DatabaseErrors) -> None:
        self._engine = engine
        self._errors = errors
        self._lock = threading.Lock()
        self._conn: Any = None

    def executemany(self, *statements: tuple[str, list[Any]]) -> None:
        """Each `(sql, rows)` over its rows, in one transaction, committed."""
        with self._lock, self._errors:
            conn, self._conn = self._conn, None
            if conn is None:
                conn = self._engine.raw_connection()
            # The driver's own connection: the pool's proxy forwards each attribute
            # through __getattr__.
            driver = conn.driver_connection
            try:
                cursor = driver.cursor()
                try:
                    for sql, rows in statements:
                        if rows:
                            cursor.executemany(sql, rows)
                finally:
                    cursor.close()
                driver.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn

    def close(self) -> None:
        # A write stuck on a database that stopped answering keeps the lock: do not
        # wait for it at exit (the process's end closes the connection).
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            conn, self._conn = self._conn, None
        finally:
            self._lock.release()
        if conn is not None:
            conn.close()


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
        webhooks: bool = False,
    ) -> None:
        self.engine = engine
        # What an event's `webhook` column starts as: pending for the dispatcher
        # when a receiver is configured; NULL (nobody to tell) for the events
        # written without one (bounces, which the timeline shows).
        self.webhook_state: str | None = "pending" if webhooks else None
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
        self._lookups: dict[int, DriverStatement] = {}  # suppressions, by address count
        self._outcome = DriverStatement(outcome_statement(), dialect, OUTCOME_NAMES)
        self._finish_sync = DriverStatement(finish_sync_statement(), dialect, FINISH_SYNC_NAMES)
        self._attempt = DriverStatement(
            attempts_table.insert(), dialect, ATTEMPT_COLUMNS, column_keys=ATTEMPT_COLUMNS
        )
        self._event = DriverStatement(
            events_table.insert(), dialect, EVENT_COLUMNS, column_keys=EVENT_COLUMNS
        )
        self._event_if_recorded = DriverStatement(
            event_if_recorded_statement(), dialect, EVENT_COLUMNS
        )
        self._suppress = DriverStatement(
            suppression_insert(dialect),
            dialect,
            SUPPRESSION_COLUMNS,
            column_keys=SUPPRESSION_COLUMNS,
        )
        self._tag_insert = DriverStatement(
            message_tags_table.insert(), dialect, TAG_COLUMNS, column_keys=TAG_COLUMNS
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

    def _outcome_logs(
        self, outcomes: Sequence[Outcome], now: float
    ) -> tuple[tuple[str, list[Any]], ...]:
        """What every recorded attempt writes beside its message's row, in the same
        transaction: its attempt row, the addresses it found refused for good (the
        suppression list) and, when a webhook receiver is configured, its event (a
        failure's only if the row took it: statements.event_if_recorded_statement).
        As `(sql, rows)` for executemany; after the message rows' UPDATE."""
        # Events go to the events table only for a receiver: the timeline reads
        # delivery outcomes from the attempt log (service/timeline.py).
        notify = self.webhook_state is not None
        sent = [o for o in outcomes if o.error is None] if notify else []
        failed = [o for o in outcomes if o.error is not None] if notify else []
        return (
            (self._attempt.sql, [self._attempt.params(attempt_row(o, now)) for o in outcomes]),
            (
                self._event.sql,
                [self._event.params(event_row(o, now, self.webhook_state)) for o in sent],
            ),
            (
                self._event_if_recorded.sql,
                [
                    self._event_if_recorded.params(event_row(o, now, self.webhook_state))
                    for o in failed
                ],
            ),
            (
                self._suppress.sql,
                [self._suppress.params(row) for o in outcomes for row in hard_refusals(o, now)],
            ),
        )

    def _listed(self, cursor: Any, addresses: Iterable[str]) -> set[str]:
        """Which of `addresses` are on the suppression list, in their suppression_key
        form: one lookup by primary key, compiled once per count and run on the DBAPI
        cursor (it is in every send's insert, where SQLAlchemy's execution layer
        would cost several times what SQLite takes to answer)."""
        wanted = sorted({suppression_key(a) for a in addresses})
        if not wanted:
            return set()
        statement = self._lookups.get(len(wanted))
        if statement is None:
            names = [f"b{n}" for n in range(len(wanted))]
            address = suppressions_table.c.address
            query = sa.select(address).where(
                address.in_([sa.bindparam(name, type_=sa.Text) for name in names])
            )
            statement = self._lookups[len(wanted)] = DriverStatement(
                query, self.engine.dialect, names
            )
        cursor.execute(statement.sql, statement.params({f"b{n}": a for n, a in enumerate(wanted)}))
        return {row[0] for row in cursor.fetchall()}

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

    def checkpoint(self) -> None:
        """SQLite: copy what the WAL holds back into the database file, as far as
        readers allow (PASSIVE: it never waits for or blocks a reader or a writer).
        The scheduler calls it every poll, so that no request's or delivery's commit
        has to (engine.py: SQLITE_AUTOCHECKPOINT_PAGES). Nothing to do elsewhere."""
        if not self.is_sqlite:
            return
        with self._unavailable_on_error:
            conn = self.engine.raw_connection()
            try:
                cursor = conn.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
                cursor.close()
            finally:
                conn.close()

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
