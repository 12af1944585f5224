"""The hot paths' statements, compiled once per dialect and run on the DBAPI cursor,
and the conversions between rows and the value types.

SQLAlchemy's execution layer (cache key, parameter processing, result objects)
costs more CPU than SQLite takes to run these small statements, and on the hot
paths that CPU is GIL time taken from the event loop and the threads talking
SMTP. The SQL text and its parameter order still come from Core statements, so
SQLite and PostgreSQL keep one definition.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.db.schema import events_table, messages_table, suppressions_table
from service.syntax import suppression_key
from service.types import AttachmentInfo, Event, MessageRecord, Outcome, RejectedRecipient, Status

__all__ = [
    "ATTEMPT_COLUMNS",
    "CLAIM_NAMES",
    "EVENT_COLUMNS",
    "FINISH_SYNC_NAMES",
    "INSERT_COLUMNS",
    "OUTCOME_NAMES",
    "SUPPRESSION_COLUMNS",
    "TAG_COLUMNS",
    "DriverStatement",
    "attachments_from_json",
    "attachments_json",
    "attempt_row",
    "claim_statement",
    "event_if_recorded_statement",
    "event_row",
    "finish_sync_statement",
    "hard_refusals",
    "outcome_statement",
    "record_from_row",
    "rejected_json",
    "suppression_insert",
]

_m = messages_table.c

# The columns Outbox.insert writes.
INSERT_COLUMNS = (
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
    "owner",
    "idempotency_scope",
    "request_hash",
    "response_code",
    "response_body",
    "key_name",
    "tags",
    "meta",
    "send_at",
    "attachments",
)
TAG_COLUMNS = ("message_id", "key_name", "tag")


# The names outcome_statement binds, and the columns of an attempt row.
OUTCOME_NAMES = (
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
ATTEMPT_COLUMNS = ("message_id", "number", "started_at", "finished_at", "outcome", "code", "error")
EVENT_COLUMNS = ("message_id", "type", "at", "attempt", "code", "detail", "recipient", "webhook")
SUPPRESSION_COLUMNS = ("address", "reason", "created_at", "message_id", "detail")
CLAIM_NAMES = ("b_now", "b_lease_until", "b_owner")


def attachments_json(attachments: Sequence[AttachmentInfo]) -> str | None:
    if not attachments:
        return None
    return json.dumps(
        [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "content_id": a.content_id,
            }
            for a in attachments
        ]
    )


def attachments_from_json(text: str | None) -> list[AttachmentInfo]:
    if not text:
        return []
    return [
        AttachmentInfo(
            filename=a["filename"],
            content_type=a["content_type"],
            size=int(a["size"]),
            content_id=a.get("content_id"),
        )
        for a in json.loads(text)
    ]


def rejected_json(rejected: Sequence[RejectedRecipient]) -> str | None:
    if not rejected:
        return None
    return json.dumps(
        [{"recipient": r.recipient, "code": r.code, "message": r.message} for r in rejected]
    )


def rejected_from_json(text: str | None) -> list[RejectedRecipient]:
    if not text:
        return []
    return [
        RejectedRecipient(recipient=r["recipient"], code=int(r["code"]), message=r["message"])
        for r in json.loads(text)
    ]


def claim_statement(*, postgres: bool, count: int) -> sa.Update:
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


def outcome_statement() -> sa.Update:
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


# The names finish_sync_statement binds.
FINISH_SYNC_NAMES = (
    "b_id",
    "status",
    "attempts",
    "last_error",
    "last_code",
    "rejected",
    "sent_at",
    "b_now",
    "response_code",
    "response_body",
)


def finish_sync_statement() -> sa.Update:
    """A synchronous send's final outcome and the answer it gave (for an
    Idempotency-Key's replay), written once the relay has answered."""
    return (
        messages_table.update()
        .where(_m.id == sa.bindparam("b_id"))
        .values(
            status=sa.bindparam("status"),
            attempts=sa.bindparam("attempts"),
            last_error=sa.bindparam("last_error"),
            last_code=sa.bindparam("last_code"),
            rejected=sa.bindparam("rejected"),
            sent_at=sa.bindparam("sent_at"),
            updated_at=sa.bindparam("b_now"),
            lease_until=None,
            owner=None,
            response_code=sa.bindparam("response_code"),
            response_body=sa.bindparam("response_body"),
        )
    )


class DriverStatement:
    """A Core statement compiled once for the engine's dialect, run on the bare DBAPI
    cursor with values by name (see the module docstring for why)."""

    def __init__(
        self,
        statement: sa.Insert | sa.Update | sa.Select[Any],
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


def attempt_row(outcome: Outcome, now: float) -> dict[str, Any]:
    """The attempt log's row for one outcome."""
    error = outcome.error
    return {
        "message_id": outcome.id,
        "number": outcome.attempt,
        "started_at": outcome.started_at or now,
        "finished_at": outcome.finished_at or now,
        "outcome": outcome.kind,
        "code": error.code if error is not None else None,
        "error": str(error) if error is not None else None,
    }


def event_type(outcome: Outcome) -> str:
    """The event an attempt's outcome is: sent, deferred (it will be retried) or failed."""
    if outcome.error is None:
        return "message.sent"
    return "message.deferred" if outcome.status == "queued" else "message.failed"


def event_row(outcome: Outcome, now: float, webhook: str | None) -> dict[str, Any]:
    """The events table's row for one attempt's outcome; `webhook` is "pending" when a
    receiver is configured. A relay's acceptance is dated when the relay answered
    (a bounce it causes comes later); a failure when its outcome is written, which
    is how event_if_recorded_statement finds that the row took it."""
    error = outcome.error
    return {
        "message_id": outcome.id,
        "type": event_type(outcome),
        "at": outcome.finished_at or now if error is None else now,
        "attempt": outcome.attempt,
        "code": error.code if error is not None else None,
        "detail": str(error) if error is not None else None,
        "recipient": error.recipient if error is not None else None,
        "webhook": webhook,
    }


def event_if_recorded_statement() -> sa.Insert:
    """The event of a failed attempt, written only if the message's row took that
    attempt's outcome (its UPDATE set `updated_at` to the event's time under the
    same attempt): a stale claim's failure, whose outcome was not written, gets no
    event either. A relay's acceptance is an event whatever the row says: it
    happened (record_acceptances writes it before the row)."""
    c = events_table.c
    binds = {name: sa.bindparam(name, type_=c[name].type) for name in EVENT_COLUMNS}
    recorded = sa.exists().where(
        _m.id == binds["message_id"],
        _m.updated_at == binds["at"],
        _m.attempts == binds["attempt"],
    )
    return events_table.insert().from_select(
        list(EVENT_COLUMNS), sa.select(*binds.values()).where(recorded)
    )


def hard_refusals(outcome: Outcome, now: float) -> list[dict[str, Any]]:
    """Suppression rows for the recipients the relay refused with a 5xx at RCPT: those
    it refused while taking the others, and those of a message it refused whole."""
    refused = [(r.recipient, r.code, r.message) for r in outcome.rejected]
    if outcome.error is not None:
        refused.extend(outcome.error.refused)
    return [
        {
            "address": suppression_key(address),
            "reason": "hard_bounce",
            "created_at": now,
            "message_id": outcome.id,
            "detail": f"{code} {text}".strip(),
        }
        for address, code, text in refused
        if 500 <= code <= 599
    ]


def suppression_insert(dialect: sa.Dialect) -> sa.Insert:
    """INSERT of a suppression that leaves an address already listed as it is (the
    first reason and time are kept)."""
    if dialect.name == "postgresql":
        return postgresql.insert(suppressions_table).on_conflict_do_nothing()
    return sqlite.insert(suppressions_table).on_conflict_do_nothing()


def record_from_row(row: Any, events: list[Event] | None = None) -> MessageRecord:
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
        rejected=rejected_from_json(row.rejected),
        tags=json.loads(row.tags) if row.tags else [],
        metadata=json.loads(row.meta) if row.meta else {},
        send_at=row.send_at,
        attachments=attachments_from_json(row.attachments),
        events=events or [],
    )
