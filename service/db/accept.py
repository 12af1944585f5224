"""The API's writes: the accept path's (group-committed inserts, idempotency),
the synchronous path's attempt log, and cancel."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.db.schema import events_table, messages_table
from service.db.statements import attachments_json, rejected_json
from service.db.store import Store
from service.errors import DatabaseUnavailable, IdempotencyKeyTaken, RecipientSuppressed
from service.syntax import suppression_key
from service.types import IdempotencyRecord, NewMessage, Outcome

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["AcceptWrites"]

_m = messages_table.c


class AcceptWrites(Store):
    def insert(self, message: NewMessage) -> None:
        """Commit one message (status queued for async, sending for sync).
        Raises IdempotencyKeyTaken or DatabaseUnavailable.

        The write insert_many() does, for one row, raising its error. The service's
        requests insert through the committer (service/group_commit.py), which
        calls insert_many().
        """
        self._check_sqlite_file()
        self._execute_insert([message])

    def insert_all(self, messages: Sequence[NewMessage]) -> None:
        """Commit every message in one transaction, or none (a batch). Raises
        IdempotencyKeyTaken (the one key among them is taken) or DatabaseUnavailable."""
        self._check_sqlite_file()
        self._execute_insert(messages)

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
        except (IdempotencyKeyTaken, IntegrityError, RecipientSuppressed) as exc:
            if len(messages) == 1:
                return [exc]
        else:
            return [None] * len(messages)
        results: list[Exception | None] = []
        for message in messages:
            try:
                self._execute_insert([message])
            except (
                DatabaseUnavailable,
                IdempotencyKeyTaken,
                IntegrityError,
                RecipientSuppressed,
            ) as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def _row(self, message: NewMessage, now: float) -> Any:
        rendered = message.rendered
        is_async = message.mode == "async"
        scheduled = message.send_at is not None and message.send_at > now
        status = ("scheduled" if scheduled else "queued") if is_async else "sending"
        due = max(now, message.send_at or now)
        return self._insert.params(
            {
                "id": message.id,
                "mode": message.mode,
                "status": status,
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
                "next_attempt_at": due if is_async else None,
                "lease_until": None if is_async else now + self._lease_seconds,
                "owner": None if is_async else self.instance,
                "idempotency_scope": message.idempotency_scope,
                "request_hash": message.request_hash,
                "response_code": message.response_code,
                "response_body": message.response_body,
                "key_name": message.key_name,
                "tags": json.dumps(message.tags) if message.tags else None,
                "meta": json.dumps(message.metadata) if message.metadata else None,
                "send_at": message.send_at,
                "attachments": attachments_json(message.attachments),
            }
        )

    def _execute_insert(self, messages: Sequence[NewMessage]) -> None:
        now = self._clock()
        sql = self._insert.sql
        rows = [self._row(message, now) for message in messages]
        tags = [
            self._tag_insert.params({"message_id": m.id, "key_name": m.key_name, "tag": tag})
            for m in messages
            if m.tags and m.key_name is not None
            for tag in m.tags
        ]
        with self._driver() as cursor:
            # In the insert's transaction: a suppression added meanwhile is either
            # seen here or added after these rows were stored, never between.
            self._refuse_suppressed(cursor, messages)
            try:
                if len(rows) == 1:
                    cursor.execute(sql, rows[0])
                else:
                    cursor.executemany(sql, rows)
                if tags:
                    cursor.executemany(self._tag_insert.sql, tags)
            except self._dbapi.IntegrityError as exc:
                scopes = [m.idempotency_scope for m in messages if m.idempotency_scope]
                if len(scopes) == 1 and "idempotency_scope" in str(exc):
                    raise IdempotencyKeyTaken(scopes[0]) from exc
                raise IntegrityError(sql, rows, exc) from exc

    def _refuse_suppressed(self, cursor: Any, messages: Sequence[NewMessage]) -> None:
        """RecipientSuppressed for the first message naming a listed address: one
        lookup for every recipient of the batch."""
        listed = self._listed(cursor, (r for m in messages for r in m.rendered.rcpt_tos))
        if not listed:
            return
        for index, message in enumerate(messages):
            for recipient in message.rendered.rcpt_tos:
                if suppression_key(recipient) in listed:
                    raise RecipientSuppressed(recipient, index)

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
                    last_error=str(error) if error is not None else None,
                    last_code=error.code if error is not None else None,
                    updated_at=now,
                    lease_until=wait_until + self._lease_seconds,
                )
            )
            # Retried inline: the event says deferred, whatever the outcome knew of when.
            self._write_outcome_logs(conn, dataclasses.replace(outcome, retry_at=wait_until), now)

    def finish_sync(self, outcome: Outcome, response_code: int, response_body: str) -> None:
        """Record the final outcome of a synchronous send and the answer given
        (on the DBAPI cursor: it is on every /send's path)."""
        now = self._clock()
        error = outcome.error
        values = {
            "b_id": outcome.id,
            "status": "sent" if error is None else "failed",
            "attempts": outcome.attempt,
            "last_error": str(error) if error is not None else None,
            "last_code": error.code if error is not None else None,
            "rejected": rejected_json(outcome.rejected),
            "sent_at": now if error is None else None,
            "b_now": now,
            "response_code": response_code,
            "response_body": response_body,
        }
        with self._driver() as cursor:
            cursor.execute(self._finish_sync.sql, self._finish_sync.params(values))
            for sql, rows in self._outcome_logs([outcome], now):
                if rows:
                    cursor.executemany(sql, rows)

    def _write_outcome_logs(self, conn: Connection, outcome: Outcome, now: float) -> None:
        for sql, rows in self._outcome_logs([outcome], now):
            if rows:
                conn.exec_driver_sql(sql, rows)

    # -- cancel -------------------------------------------------------------------------

    def cancel(self, id: str, key_name: str) -> bool:
        """scheduled or queued -> cancelled, in one conditional statement: a message a
        delivery thread claimed meanwhile is `sending` and stays untouched. True when
        this call cancelled it (then it is never claimed: claims take `queued` only)."""
        now = self._clock()
        statement = (
            messages_table.update()
            .where(
                _m.id == id,
                sa.or_(_m.key_name == key_name, _m.key_name.is_(None)),
                _m.mode == "async",
                _m.status.in_(("scheduled", "queued")),
            )
            .values(status="cancelled", next_attempt_at=None, updated_at=now)
        )
        with self._tx() as conn:
            if not conn.execute(statement).rowcount:
                return False
            if self.webhook_state is not None:
                conn.execute(
                    events_table.insert(),
                    {
                        "message_id": id,
                        "type": "message.cancelled",
                        "at": now,
                        "webhook": self.webhook_state,
                    },
                )
            return True
