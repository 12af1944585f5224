"""The message log and outbox: SQLAlchemy Core, SQLite by default (WAL), PostgreSQL too.

Every state change of a message is one SQL statement or one transaction, written
so that the same text runs on SQLite and PostgreSQL. The hot paths are the
accept path (`insert_many`: the rows of the requests waiting at that moment in
one INSERT batch and one COMMIT, see service/group_commit.py) and the delivery
path (`record_and_claim`: a batch's outcomes and the next batch's claim, one
UPDATE ... RETURNING, in one transaction), so a delivery thread spends its time
sending, not writing. Both run on the DBAPI cursor (`_DriverStatement`).

Times are stored as float epoch seconds (portable, cheap to compare); the API
layer formats them as ISO 8601.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from service.config import Settings
    from service.mailer import DeliveryError

from service.mailer import RejectedRecipient, RenderedMessage

__all__ = [
    "ClaimedMessage",
    "DatabaseUnavailable",
    "IdempotencyKeyTaken",
    "IdempotencyRecord",
    "MessageRecord",
    "Mode",
    "NewMessage",
    "Outbox",
    "Outcome",
    "Status",
    "attempts_table",
    "make_engine",
    "messages_table",
    "metadata",
]

log = logging.getLogger(__name__)

Status = Literal["queued", "sending", "sent", "failed"]
Mode = Literal["sync", "async"]

# What a synchronous row left in `sending` by a dead process becomes: we never
# finish a sync send in the background, because its caller got no 200 and may
# already have tried again; the honest record is that nobody knows.
INTERRUPTED_SYNC_ERROR = (
    "interrupted: the service stopped during a synchronous send; outcome unknown"
)

# SQLite waits this long for a competing writer before giving up with "database
# is locked" (which becomes DatabaseUnavailable, so a 503, not a hung request).
SQLITE_BUSY_TIMEOUT_MS = 5000

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


class DatabaseUnavailable(Exception):
    """The database could not store or read (locked past a timeout, disk full, gone)."""


class IdempotencyKeyTaken(Exception):
    """insert() lost a race: another request already stored this idempotency key."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    id: str
    mode: Mode
    rendered: RenderedMessage
    to: list[str]  # display form of the `to` field, for GET /messages/{id}
    subject: str
    # Idempotency: scope = "<api key fingerprint>:<Idempotency-Key>"; hash of the request body.
    idempotency_scope: str | None = None
    request_hash: str | None = None
    # For async messages the answer is known at insert time and stored for replays.
    response_code: int | None = None
    response_body: str | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    message_id: str  # our id
    request_hash: str
    response_code: int | None  # None while the first request is still in progress
    response_body: str | None


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: str
    attempt: int  # the number of this attempt (1 for the first)
    rendered: RenderedMessage


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt, written by record_outcomes()."""

    id: str
    attempt: int
    error: DeliveryError | None = None  # None: sent
    rejected: list[RejectedRecipient] = field(default_factory=list)
    retry_at: float | None = None  # with a temporary error: back to queued, due then
    started_at: float = 0.0


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    status: Status
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    sent_at: float | None
    message_id: str
    to: list[str]
    subject: str
    rejected: list[RejectedRecipient] = field(default_factory=list)


# -- schema --------------------------------------------------------------------

metadata = sa.MetaData()

messages_table = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # uuid4 hex
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("mail_from", sa.Text, nullable=False),
    sa.Column("rcpt_tos", sa.Text, nullable=False),  # JSON list: the envelope
    sa.Column("to_addrs", sa.Text, nullable=False),  # JSON list: the display `to`
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),  # the Message-ID header
    sa.Column("smtputf8", sa.Boolean, nullable=False, default=False),
    sa.Column("raw", sa.LargeBinary, nullable=True),  # NULL once purged by retention
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_code", sa.Integer, nullable=True),
    sa.Column("rejected", sa.Text, nullable=True),  # JSON list of {recipient, code, message}
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("sent_at", sa.Double, nullable=True),
    sa.Column("next_attempt_at", sa.Double, nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
    sa.Column("owner", sa.Text, nullable=True),
    # Unique, so two concurrent requests with one key cannot both insert; NULL
    # (no key, or purged after the TTL) never collides.
    sa.Column("idempotency_scope", sa.Text, nullable=True),
    sa.Column("request_hash", sa.Text, nullable=True),
    sa.Column("response_code", sa.Integer, nullable=True),
    sa.Column("response_body", sa.Text, nullable=True),
    sa.UniqueConstraint("idempotency_scope", name="uq_messages_idempotency_scope"),
    # due_ids() and claim(): queued rows ordered by due time.
    sa.Index("ix_messages_status_next_attempt", "status", "next_attempt_at"),
    # reclaim_expired_leases(): rows in sending ordered by lease end.
    sa.Index("ix_messages_status_lease", "status", "lease_until"),
)

attempts_table = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # sent | temporary | permanent
    sa.Column("code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)

_m = messages_table.c


# -- engine ----------------------------------------------------------------------


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
            connect_args=_connect_args(url),
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
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


def _connect_args(url: sa.URL) -> dict[str, Any]:
    """Driver options for a server database: bound how long connecting may take."""
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        # libpq waits for ever by default on an unreachable host; a request
        # should get its 503 instead, and a delivery thread should retry.
        return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return {}


def _sqlite_path(engine: Engine) -> Path | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("uri") or str(url.database).startswith("file:"):
        return None  # URI filenames (mode=ro and friends): leave them to SQLite
    return Path(str(url.database)).absolute()


# -- helpers -----------------------------------------------------------------------

# The columns Outbox.insert writes.
_INSERT_COLUMNS = (
    "id",
    "mode",
    "status",
    "mail_from",
    "rcpt_tos",
    "to_addrs",
    "subject",
    "message_id",
    "smtputf8",
    "raw",
    "attempts",
    "created_at",
    "updated_at",
    "next_attempt_at",
    "lease_until",
    "idempotency_scope",
    "request_hash",
    "response_code",
    "response_body",
)


# The names _outcome_statement binds, and the columns of an attempt row.
_OUTCOME_NAMES = (
    "b_id",
    "b_attempt",
    "status",
    "last_error",
    "last_code",
    "rejected",
    "sent_at",
    "next_attempt_at",
    "b_now",
)
_ATTEMPT_COLUMNS = ("message_id", "number", "started_at", "finished_at", "outcome", "code", "error")
_CLAIM_NAMES = ("b_now", "b_lease_until", "b_owner")


def _describe(error: DeliveryError) -> str:
    """The text kept in last_error: the server's reply, with its code in front."""
    reply = error.reply.strip()
    if error.code is not None and not reply.startswith(str(error.code)):
        reply = f"{error.code} {reply}".strip()
    if error.recipient:
        reply = f"{reply} (recipient {error.recipient})"
    return reply


def _rejected_json(rejected: Sequence[RejectedRecipient]) -> str | None:
    if not rejected:
        return None
    return json.dumps(
        [{"recipient": r.recipient, "code": r.code, "message": r.message} for r in rejected]
    )


def _rejected_from_json(text: str | None) -> list[RejectedRecipient]:
    if not text:
        return []
    return [
        RejectedRecipient(recipient=r["recipient"], code=int(r["code"]), message=r["message"])
        for r in json.loads(text)
    ]


def _attempt_kind(error: DeliveryError | None) -> str:
    if error is None:
        return "sent"
    return "temporary" if error.temporary else "permanent"


def _claim_statement(*, postgres: bool, count: int) -> sa.Update:
    """queued and due -> sending for `count` ids (`b_id0`...), returning what the sender
    needs. One statement per batch size: the driver gets plain placeholders, no
    expanding IN to render per execution."""
    ids = [sa.bindparam(f"b_id{n}", type_=sa.String) for n in range(count)]
    now = sa.bindparam("b_now", type_=sa.Double)
    if postgres:
        # Lock the rows first and skip those another process holds, so two
        # instances claiming the same ids neither wait nor both win.
        locked = (
            sa.select(_m.id)
            .where(
                _m.id.in_(ids),
                _m.status == "queued",
                _m.mode == "async",
                _m.next_attempt_at <= now,
            )
            .with_for_update(skip_locked=True)
        )
        where: sa.ColumnElement[bool] = _m.id.in_(locked.scalar_subquery())
    else:
        # SQLite has one writer at a time: the UPDATE itself is the lock. Its
        # planner, without statistics, would walk the (status, next_attempt_at)
        # index over the whole backlog; `status || ''` and `next_attempt_at + 0`
        # rule that index out, so the few ids are looked up by primary key.
        where = sa.and_(
            _m.id.in_(ids),
            _m.status.concat("") == "queued",
            _m.mode == "async",
            _m.next_attempt_at + 0 <= now,
        )
    return (
        messages_table.update()
        .where(where)
        .values(
            status="sending",
            attempts=_m.attempts + 1,
            lease_until=sa.bindparam("b_lease_until", type_=sa.Double),
            owner=sa.bindparam("b_owner", type_=sa.Text),
            updated_at=now,
        )
        .returning(
            _m.id, _m.attempts, _m.mail_from, _m.rcpt_tos, _m.message_id, _m.smtputf8, _m.raw
        )
    )


def _outcome_statement() -> sa.Update:
    """One row per outcome (executemany). A status is only written while the row is
    still in `sending` under the same attempt, so a stale worker cannot clobber it."""
    return (
        messages_table.update()
        .where(
            _m.id == sa.bindparam("b_id"),
            _m.status == "sending",
            _m.attempts == sa.bindparam("b_attempt"),
        )
        .values(
            status=sa.bindparam("status"),
            last_error=sa.bindparam("last_error"),
            last_code=sa.bindparam("last_code"),
            rejected=sa.bindparam("rejected"),
            sent_at=sa.bindparam("sent_at"),
            next_attempt_at=sa.bindparam("next_attempt_at"),
            lease_until=None,
            owner=None,
            updated_at=sa.bindparam("b_now"),
        )
    )


class _DriverStatement:
    """A Core statement compiled once for the engine's dialect, run on the bare DBAPI
    cursor with values by name.

    SQLAlchemy's execution layer (cache key, parameter processing, result objects)
    costs more CPU than SQLite takes to run these small statements, and on the hot
    paths that CPU is GIL time taken from the event loop and the threads talking
    SMTP. The SQL text and its parameter order still come from the Core statement,
    so SQLite and PostgreSQL keep one definition.
    """

    def __init__(
        self,
        statement: sa.Insert | sa.Update,
        dialect: sa.Dialect,
        names: Sequence[str],
        *,
        column_keys: Sequence[str] | None = None,
    ) -> None:
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys else None
        )
        self.sql = str(compiled)
        # The values written into the statement itself (status="sending" and such).
        self._fixed = compiled.construct_params(dict.fromkeys(names))
        self._order = compiled.positiontup if compiled.positional else None

    def params(self, values: dict[str, Any]) -> Any:
        """The driver's parameters (a tuple or a dict, as its paramstyle wants)."""
        merged = {**self._fixed, **values}
        if self._order is None:
            return merged
        return tuple(merged[name] for name in self._order)


class Outbox:
    """All reads and writes of the message log. Thread-safe (one engine, pooled).

    Every database error surfaces as DatabaseUnavailable, so callers handle one
    exception whether SQLite is locked, the disk is full or PostgreSQL is gone.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = 60.0,
    ) -> None:
        self.engine = engine
        self._clock = clock
        # A synchronous row is inserted in `sending` with this lease (renewed by
        # record_attempt), so a dead process's sync rows are found and failed.
        self._lease_seconds = lease_seconds
        self._postgres = engine.dialect.name == "postgresql"
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._sqlite_path = _sqlite_path(engine)
        self._sqlite_inode: int | None = None
        # The hot paths' statements, compiled once and run on the DBAPI cursor: the
        # accept path's INSERT, the delivery path's claim (one per batch size, made
        # when first needed), outcome UPDATE and attempt INSERT.
        dialect = engine.dialect
        self._insert = _DriverStatement(
            messages_table.insert(), dialect, _INSERT_COLUMNS, column_keys=_INSERT_COLUMNS
        )
        self._claims: dict[int, _DriverStatement] = {}
        self._outcome = _DriverStatement(_outcome_statement(), dialect, _OUTCOME_NAMES)
        self._attempt_insert = attempts_table.insert()
        self._attempt = _DriverStatement(
            self._attempt_insert, dialect, _ATTEMPT_COLUMNS, column_keys=_ATTEMPT_COLUMNS
        )
        self._dbapi: Any = dialect.loaded_dbapi

    # -- plumbing ---------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction; any driver error becomes DatabaseUnavailable."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"database error: {exc.orig!r}") from exc
        except self._dbapi.Error as exc:
            # A reconnect failing after the pool was invalidated (server restart)
            # reaches us unwrapped.
            raise DatabaseUnavailable(f"database error: {exc!r}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"database error: {exc.orig!r}") from exc
        except self._dbapi.Error as exc:  # unwrapped, as in _tx
            raise DatabaseUnavailable(f"database error: {exc!r}") from exc

    @contextmanager
    def _driver(self) -> Iterator[Any]:
        """A DBAPI cursor in one transaction on a pooled connection, committed at the
        end; driver errors become DatabaseUnavailable (except integrity errors, which
        callers that expect them catch inside)."""
        dbapi = self._dbapi
        try:
            conn = self.engine.raw_connection()
        except DBAPIError as exc:  # could not connect
            raise DatabaseUnavailable(f"database error: {exc.orig!r}") from exc
        except dbapi.Error as exc:
            # After the pool invalidated its connections (a server restart), the
            # reconnect's failure reaches raw_connection() unwrapped.
            raise DatabaseUnavailable(f"database error: {exc!r}") from exc
        except sa.exc.TimeoutError as exc:  # every pooled connection busy
            raise DatabaseUnavailable(f"database busy: {exc}") from exc
        try:
            cursor = conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            conn.commit()
        except dbapi.IntegrityError:
            raise
        except dbapi.Error as exc:
            raise DatabaseUnavailable(f"database error: {exc!r}") from exc
        finally:
            # Back to the pool, which rolls back an unfinished transaction, or drops
            # the connection if even that fails (a dead server connection), as it
            # does for SQLAlchemy's own statements.
            conn.close()

    def _claim_for(self, count: int) -> _DriverStatement:
        statement = self._claims.get(count)
        if statement is None:
            names = [*_CLAIM_NAMES, *(f"b_id{n}" for n in range(count))]
            statement = _DriverStatement(
                _claim_statement(postgres=self._postgres, count=count),
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

    # -- schema -----------------------------------------------------------------

    def create_schema(self) -> None:
        """Create or upgrade the schema through the migrations (service.migrations).

        The one way a schema is made, in tests and in production alike, so the
        tests exercise the migrations the deployments run.
        """
        # Imported here: alembic is only needed by whoever creates the schema.
        from service.migrations import migrate

        try:
            migrate(self.engine)
        except DBAPIError as exc:
            raise DatabaseUnavailable(f"database error: {exc.orig!r}") from exc
        if self._sqlite_path is not None:
            self._sqlite_inode = self._sqlite_path.stat().st_ino

    # -- the accept path ----------------------------------------------------------

    def insert(self, message: NewMessage) -> None:
        """Commit one message (status queued for async, sending for sync).
        Raises IdempotencyKeyTaken or DatabaseUnavailable.

        The write insert_many() does, for one row, raising its error. The service's
        requests insert through the committer (service/group_commit.py), which
        calls insert_many().
        """
        self._check_sqlite_file()
        self._execute_insert([message])

    def insert_many(self, messages: Sequence[NewMessage]) -> list[Exception | None]:
        """Commit several messages in one transaction (group commit); one result each.

        A message's result is None when it is stored, else the exception insert()
        would have raised for it. When the batch fails on one row's constraint (an
        idempotency key taken), the rows are retried one by one so that only that
        row fails; when the database fails, every row gets DatabaseUnavailable.
        """
        try:
            self._check_sqlite_file()
            self._execute_insert(messages)
        except DatabaseUnavailable as exc:
            return [exc] * len(messages)
        except (IdempotencyKeyTaken, IntegrityError) as exc:
            if len(messages) == 1:
                return [exc]
        else:
            return [None] * len(messages)
        results: list[Exception | None] = []
        for message in messages:
            try:
                self._execute_insert([message])
            except (DatabaseUnavailable, IdempotencyKeyTaken, IntegrityError) as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def _row(self, message: NewMessage, now: float) -> Any:
        rendered = message.rendered
        is_async = message.mode == "async"
        return self._insert.params(
            {
                "id": message.id,
                "mode": message.mode,
                "status": "queued" if is_async else "sending",
                "mail_from": rendered.mail_from,
                "rcpt_tos": json.dumps(rendered.rcpt_tos),
                "to_addrs": json.dumps(message.to),
                "subject": message.subject,
                "message_id": rendered.message_id,
                "smtputf8": rendered.smtputf8,
                "raw": rendered.data,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "next_attempt_at": now if is_async else None,
                "lease_until": None if is_async else now + self._lease_seconds,
                "idempotency_scope": message.idempotency_scope,
                "request_hash": message.request_hash,
                "response_code": message.response_code,
                "response_body": message.response_body,
            }
        )

    def _execute_insert(self, messages: Sequence[NewMessage]) -> None:
        now = self._clock()
        sql = self._insert.sql
        rows = [self._row(message, now) for message in messages]
        with self._driver() as cursor:
            try:
                if len(rows) == 1:
                    cursor.execute(sql, rows[0])
                else:
                    cursor.executemany(sql, rows)
            except self._dbapi.IntegrityError as exc:
                scope = messages[0].idempotency_scope
                if len(messages) == 1 and scope is not None and "idempotency_scope" in str(exc):
                    raise IdempotencyKeyTaken(scope) from exc
                raise IntegrityError(sql, rows, exc) from exc

    def find_idempotent(
        self, scope: str, *, not_before: float | None = None
    ) -> IdempotencyRecord | None:
        """The message stored under this idempotency scope (created at or after
        `not_before`, when given, so an expired key that purge() has not yet
        reached is treated as absent)."""
        query = sa.select(
            _m.id, _m.request_hash, _m.response_code, _m.response_body, _m.created_at
        ).where(_m.idempotency_scope == scope)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None or (not_before is not None and row.created_at < not_before):
            return None
        return IdempotencyRecord(
            message_id=row.id,
            request_hash=row.request_hash or "",
            response_code=row.response_code,
            response_body=row.response_body,
        )

    # -- the synchronous path ---------------------------------------------------------

    def record_attempt(self, outcome: Outcome) -> None:
        """Log one attempt of a synchronous send that will be retried inline.

        The lease is renewed to cover the wait before the next attempt
        (`outcome.retry_at`, when known) plus one lease period.
        """
        now = self._clock()
        wait_until = max(now, outcome.retry_at or now)
        error = outcome.error
        with self._tx() as conn:
            conn.execute(
                messages_table.update()
                .where(_m.id == outcome.id, _m.status == "sending")
                .values(
                    attempts=outcome.attempt,
                    last_error=_describe(error) if error is not None else None,
                    last_code=error.code if error is not None else None,
                    updated_at=now,
                    lease_until=wait_until + self._lease_seconds,
                )
            )
            conn.execute(self._attempt_insert, [self._attempt_row(outcome, now)])

    def finish_sync(self, outcome: Outcome, response_code: int, response_body: str) -> None:
        """Record the final outcome of a synchronous send and the answer given."""
        now = self._clock()
        error = outcome.error
        with self._tx() as conn:
            conn.execute(
                messages_table.update()
                .where(_m.id == outcome.id)
                .values(
                    status="sent" if error is None else "failed",
                    attempts=outcome.attempt,
                    last_error=_describe(error) if error is not None else None,
                    last_code=error.code if error is not None else None,
                    rejected=_rejected_json(outcome.rejected),
                    sent_at=now if error is None else None,
                    updated_at=now,
                    lease_until=None,
                    owner=None,
                    response_code=response_code,
                    response_body=response_body,
                )
            )
            conn.execute(self._attempt_insert, [self._attempt_row(outcome, now)])

    # -- the delivery path --------------------------------------------------------------

    def claim(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[ClaimedMessage]:
        """queued and due -> sending, in one statement; returns only rows this call won."""
        if not ids:
            return []
        now = self._clock()
        with self._driver() as cursor:
            return self._claim_in(cursor, ids, owner, lease_seconds, now)

    def record_and_claim(
        self,
        outcomes: Sequence[Outcome],
        ids: Sequence[str],
        owner: str,
        lease_seconds: float,
    ) -> list[ClaimedMessage]:
        """record_outcomes() and then claim(), in one transaction: one commit per
        batch on the delivery path instead of two.

        Either both happen or neither (DatabaseUnavailable): the claimed rows are
        in `sending` under a lease exactly as after claim().
        """
        if not outcomes:
            return self.claim(ids, owner, lease_seconds)
        now = self._clock()
        with self._driver() as cursor:
            self._record_in(cursor, outcomes, now)
            if not ids:
                return []
            return self._claim_in(cursor, ids, owner, lease_seconds, now)

    def _claim_in(
        self, cursor: Any, ids: Sequence[str], owner: str, lease_seconds: float, now: float
    ) -> list[ClaimedMessage]:
        statement = self._claim_for(len(ids))
        values: dict[str, Any] = {f"b_id{n}": message_id for n, message_id in enumerate(ids)}
        values.update(b_now=now, b_lease_until=now + lease_seconds, b_owner=owner)
        cursor.execute(statement.sql, statement.params(values))
        rows = cursor.fetchall()
        order = {message_id: n for n, message_id in enumerate(ids)}
        rows.sort(key=lambda row: order.get(row[0], 0))
        return [
            ClaimedMessage(
                id=id_,
                attempt=attempts,
                rendered=RenderedMessage(
                    message_id=message_id,
                    mail_from=mail_from,
                    rcpt_tos=json.loads(rcpt_tos),
                    data=bytes(raw) if raw is not None else b"",
                    smtputf8=bool(smtputf8),
                ),
            )
            # In the order of the statement's RETURNING clause.
            for id_, attempts, mail_from, rcpt_tos, message_id, smtputf8, raw in rows
        ]

    def unclaim(self, claimed: Sequence[ClaimedMessage], owner: str) -> int:
        """Put claimed-but-unsent messages back to queued, due now, the claim undone.

        Only rows still held by this owner under this attempt are touched, so a
        message whose lease already expired and was taken by someone else is left
        alone.
        """
        if not claimed:
            return 0
        now = self._clock()
        statement = (
            messages_table.update()
            .where(
                _m.id == sa.bindparam("b_id"),
                _m.status == "sending",
                _m.owner == owner,
                _m.attempts == sa.bindparam("b_attempt"),
            )
            .values(
                status="queued",
                attempts=_m.attempts - 1,
                lease_until=None,
                owner=None,
                next_attempt_at=now,
                updated_at=now,
            )
        )
        params = [{"b_id": c.id, "b_attempt": c.attempt} for c in claimed]
        with self._tx() as conn:
            result = conn.execute(statement, params)
        return max(result.rowcount, 0)

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Write statuses (sent / failed / queued with retry time) and attempt rows,
        one transaction.

        A status is only written while the row is still in `sending` under the
        same attempt: if the lease ran out and another worker took the message,
        its newer state wins. The attempt row is logged either way.
        """
        if not outcomes:
            return
        now = self._clock()
        with self._driver() as cursor:
            self._record_in(cursor, outcomes, now)

    def _record_in(self, cursor: Any, outcomes: Sequence[Outcome], now: float) -> None:
        updates = []
        for outcome in outcomes:
            error = outcome.error
            if error is None:
                status = "sent"
            elif error.temporary and outcome.retry_at is not None:
                status = "queued"
            else:
                status = "failed"
            updates.append(
                self._outcome.params(
                    {
                        "b_id": outcome.id,
                        "b_attempt": outcome.attempt,
                        "status": status,
                        "last_error": _describe(error) if error is not None else None,
                        "last_code": error.code if error is not None else None,
                        "rejected": _rejected_json(outcome.rejected),
                        "sent_at": now if error is None else None,
                        "next_attempt_at": outcome.retry_at if status == "queued" else None,
                        "b_now": now,
                    }
                )
            )
        cursor.executemany(self._outcome.sql, updates)
        attempts = [self._attempt.params(self._attempt_row(o, now)) for o in outcomes]
        cursor.executemany(self._attempt.sql, attempts)

    def due_ids(self, limit: int) -> list[str]:
        """Ids of async messages that are queued and due now, oldest due first."""
        if limit <= 0:
            return []
        query = (
            sa.select(_m.id)
            .where(_m.status == "queued", _m.next_attempt_at <= self._clock(), _m.mode == "async")
            .order_by(_m.next_attempt_at)
            .limit(limit)
        )
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    def reclaim_expired_leases(self) -> int:
        """Async rows in sending past their lease go back to queued; sync rows become failed."""
        now = self._clock()
        expired = sa.and_(_m.status == "sending", _m.lease_until < now)
        with self._tx() as conn:
            requeued = conn.execute(
                messages_table.update()
                .where(expired, _m.mode == "async")
                .values(
                    status="queued",
                    next_attempt_at=now,
                    lease_until=None,
                    owner=None,
                    updated_at=now,
                )
            ).rowcount
            failed = conn.execute(
                messages_table.update()
                .where(expired, _m.mode == "sync")
                .values(
                    status="failed",
                    last_error=INTERRUPTED_SYNC_ERROR,
                    lease_until=None,
                    owner=None,
                    updated_at=now,
                )
            ).rowcount
        if requeued or failed:
            log.warning(
                "reclaimed expired leases: %d async message(s) re-queued, %d sync message(s) "
                "marked failed",
                requeued,
                failed,
            )
        return int(requeued) + int(failed)

    def count_unfinished(self) -> int:
        """Async messages queued or sending (the backlog QUEUE_MAXSIZE bounds)."""
        query = (
            sa.select(sa.func.count())
            .select_from(messages_table)
            .where(_m.status.in_(("queued", "sending")), _m.mode == "async")
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def oldest_queued_age(self) -> float | None:
        query = sa.select(sa.func.min(_m.created_at)).where(
            _m.status == "queued", _m.mode == "async"
        )
        with self._read() as conn:
            oldest = conn.execute(query).scalar_one()
        if oldest is None:
            return None
        return max(0.0, self._clock() - float(oldest))

    def get(self, id: str) -> MessageRecord | None:
        query = sa.select(
            _m.id,
            _m.status,
            _m.attempts,
            _m.last_error,
            _m.created_at,
            _m.updated_at,
            _m.sent_at,
            _m.message_id,
            _m.to_addrs,
            _m.subject,
            _m.rejected,
        ).where(_m.id == id)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return self._record(row)

    def attempts(self, id: str) -> list[dict[str, Any]]:
        """The attempt log of one message, oldest first (for operators and tests)."""
        a = attempts_table.c
        query = (
            sa.select(a.number, a.started_at, a.finished_at, a.outcome, a.code, a.error)
            .where(a.message_id == id)
            .order_by(a.id)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def purge(self, *, idempotency_before: float, bodies_sent_before: float | None) -> None:
        """Forget idempotency keys older than the TTL; drop bodies of old sent messages."""
        with self._tx() as conn:
            conn.execute(
                messages_table.update()
                .where(_m.idempotency_scope.is_not(None), _m.created_at < idempotency_before)
                .values(idempotency_scope=None)
            )
            if bodies_sent_before is not None:
                conn.execute(
                    messages_table.update()
                    .where(
                        _m.status == "sent",
                        _m.sent_at < bodies_sent_before,
                        _m.raw.is_not(None),
                    )
                    .values(raw=None)
                )

    # -- rows -------------------------------------------------------------------------

    @staticmethod
    def _attempt_row(outcome: Outcome, now: float) -> dict[str, Any]:
        error = outcome.error
        return {
            "message_id": outcome.id,
            "number": outcome.attempt,
            "started_at": outcome.started_at or now,
            "finished_at": now,
            "outcome": _attempt_kind(error),
            "code": error.code if error is not None else None,
            "error": _describe(error) if error is not None else None,
        }

    @staticmethod
    def _record(row: Any) -> MessageRecord:
        return MessageRecord(
            id=row.id,
            status=cast("Status", row.status),
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            sent_at=row.sent_at,
            message_id=row.message_id,
            to=json.loads(row.to_addrs),
            subject=row.subject,
            rejected=_rejected_from_json(row.rejected),
        )

    def raw(self, id: str) -> bytes | None:
        """The stored message bytes (None once purged or for an unknown id)."""
        with self._read() as conn:
            value = conn.execute(sa.select(_m.raw).where(_m.id == id)).scalar_one_or_none()
        return bytes(value) if value is not None else None
