"""The message log and outbox: SQLAlchemy Core, SQLite by default (WAL), PostgreSQL too.

INTERFACE STUB written by the lead; the outbox owner fills it in. Other modules
rely on exactly these names and signatures.

Times are stored as float epoch seconds (portable, cheap to compare); the API
layer formats them as ISO 8601.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from service.config import Settings
    from service.mailer import DeliveryError, RejectedRecipient, RenderedMessage

Status = Literal["queued", "sending", "sent", "failed"]
Mode = Literal["sync", "async"]


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


def make_engine(settings: Settings) -> Engine:
    """Engine for DATABASE_URL; SQLite gets WAL, busy_timeout and SQLITE_SYNCHRONOUS."""
    raise NotImplementedError


class Outbox:
    """All reads and writes of the message log. Thread-safe (one engine, pooled)."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        raise NotImplementedError

    def create_schema(self) -> None:
        raise NotImplementedError

    def insert(self, message: NewMessage) -> None:
        """Commit one message (status queued for async, sending for sync).
        Raises IdempotencyKeyTaken or DatabaseUnavailable."""
        raise NotImplementedError

    def find_idempotent(self, scope: str) -> IdempotencyRecord | None:
        raise NotImplementedError

    def finish_sync(self, outcome: Outcome, response_code: int, response_body: str) -> None:
        """Record the final outcome of a synchronous send and the answer given."""
        raise NotImplementedError

    def record_attempt(self, outcome: Outcome) -> None:
        """Log one attempt of a synchronous send that will be retried inline."""
        raise NotImplementedError

    def claim(self, ids: Sequence[str], owner: str, lease_seconds: float) -> list[ClaimedMessage]:
        """queued and due -> sending, in one statement; returns only rows this call won."""
        raise NotImplementedError

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Write statuses (sent / failed / queued with retry time) and attempt rows, one transaction."""
        raise NotImplementedError

    def due_ids(self, limit: int) -> list[str]:
        """Ids of async messages that are queued and due now, oldest due first."""
        raise NotImplementedError

    def reclaim_expired_leases(self) -> int:
        """Async rows in sending past their lease go back to queued; sync rows become failed."""
        raise NotImplementedError

    def count_unfinished(self) -> int:
        """Async messages queued or sending (the backlog QUEUE_MAXSIZE bounds)."""
        raise NotImplementedError

    def oldest_queued_age(self) -> float | None:
        raise NotImplementedError

    def get(self, id: str) -> MessageRecord | None:
        raise NotImplementedError

    def purge(self, *, idempotency_before: float, bodies_sent_before: float | None) -> None:
        """Forget idempotency keys older than the TTL; drop bodies of old sent messages."""
        raise NotImplementedError
