"""The delivery path: claims under a lease, outcomes, the scheduler's queries."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from service.db.schema import attempts_table, events_table, messages_table
from service.db.statements import rejected_json
from service.db.store import HeldConnection, Store
from service.types import ClaimedMessage, Outcome, RenderedMessage

__all__ = ["INTERRUPTED_SYNC_ERROR", "DeliveryWrites"]

log = logging.getLogger("service.db")

_m = messages_table.c
_a = attempts_table.c

# What a synchronous row left in `sending` by a dead process becomes: we never
# finish a sync send in the background, because its caller got no 200 and may
# already have tried again; the honest record is that nobody knows.
INTERRUPTED_SYNC_ERROR = (
    "interrupted: the service stopped during a synchronous send; outcome unknown"
)


class DeliveryWrites(Store):
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
        *,
        accepted: Sequence[Outcome] | None = None,
    ) -> list[ClaimedMessage]:
        """record_outcomes() and then claim(), in one transaction: one commit per
        batch on the delivery path instead of two.

        Either both happen or neither (DatabaseUnavailable): the claimed rows are
        in `sending` under a lease exactly as after claim().
        """
        if not outcomes and not accepted:
            return self.claim(ids, owner, lease_seconds)
        now = self._clock()
        with self._driver() as cursor:
            self._record_in(cursor, outcomes, now, accepted)
            if not ids:
                return []
            return self._claim_in(cursor, ids, owner, lease_seconds, now)

    def hold_connection(self) -> HeldConnection:
        """A connection for record_acceptances to keep (close it when done)."""
        return HeldConnection(self.engine, self._unavailable_on_error)

    def record_acceptances(
        self, outcomes: Sequence[Outcome], held: HeldConnection | None = None
    ) -> None:
        """The relay took these messages: their `sent` attempt rows and events (and
        the recipients it refused for good), one small transaction (appends only: no
        message row touched), written before each connection's next final dot, on
        `held` if given. The messages'
        own rows follow with the batch (record_outcomes); until then a take-back
        finds the attempt and records the message as sent instead of sending it
        again."""
        if not outcomes:
            return
        logs = self._outcome_logs(outcomes, self._clock())
        if held is not None:
            held.executemany(*logs)
            return
        with self._driver() as cursor:
            for sql, rows in logs:
                if rows:
                    cursor.executemany(sql, rows)

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

    def record_outcomes(
        self, outcomes: Sequence[Outcome], *, accepted: Sequence[Outcome] | None = None
    ) -> None:
        """Write statuses (sent / failed / queued with retry time) and attempt rows,
        one transaction.

        With `accepted` (the delivery path), the sent outcomes' attempt rows are
        not written from `outcomes`: each is either recorded already
        (record_acceptances) or among `accepted`, written here, whichever batch
        it came from. Without it every outcome's attempt row is written.

        A status is only written while the row is still in `sending` under the
        same attempt: if the lease ran out and another worker took the message,
        its newer state wins. The attempt row is logged either way.
        """
        if not outcomes and not accepted:
            return
        now = self._clock()
        with self._driver() as cursor:
            self._record_in(cursor, outcomes, now, accepted)

    def _record_in(
        self,
        cursor: Any,
        outcomes: Sequence[Outcome],
        now: float,
        accepted: Sequence[Outcome] | None,
    ) -> None:
        updates = []
        for outcome in outcomes:
            error, status = outcome.error, outcome.status
            updates.append(
                self._outcome.params(
                    {
                        "b_id": outcome.id,
                        "b_attempt": outcome.attempt,
                        "status": status,
                        "last_error": str(error) if error is not None else None,
                        "last_code": error.code if error is not None else None,
                        "rejected": rejected_json(outcome.rejected),
                        "sent_at": now if error is None else None,
                        "next_attempt_at": outcome.retry_at if status == "queued" else None,
                        "b_now": now,
                    }
                )
            )
        if updates:
            cursor.executemany(self._outcome.sql, updates)
        rows: Sequence[Outcome] = outcomes
        if accepted is not None:
            rows = [*(o for o in outcomes if o.error is not None), *accepted]
        for sql, params in self._outcome_logs(rows, now):
            if params:
                cursor.executemany(sql, params)

    def release_scheduled(self) -> int:
        """scheduled -> queued for the messages whose send_at has come (due at their
        send_at, so they go ahead of later mail). A read first, from the index, so
        that a poll with nothing due takes no write lock."""
        now = self._clock()
        due = sa.and_(_m.status == "scheduled", _m.next_attempt_at <= now)
        with self._read() as conn:
            if conn.execute(sa.select(_m.id).where(due).limit(1)).first() is None:
                return 0
        statement = messages_table.update().where(due).values(status="queued", updated_at=now)
        with self._tx() as conn:
            return max(int(conn.execute(statement).rowcount), 0)

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
        """Rows in sending past their lease (a dead process's, or one too slow to
        trust) are taken back: async ones re-queued, sync ones marked failed."""
        now = self._clock()
        return self._take_back(
            sa.and_(_m.status == "sending", _m.lease_until < now), now, "expired"
        )

    def take_back_claims(self, owner: str | None) -> int:
        """At start-up, what this instance's previous process left in sending is taken
        back at once, leases or not: the claims under `owner`, or every claim when
        None (SQLite: the file is this process's alone). Only safe while this
        process holds the InstanceLock (service/instance.py)."""
        now = self._clock()
        mine = _m.status == "sending"
        if owner is not None:
            mine = sa.and_(mine, _m.owner == owner)
        return self._take_back(mine, now, "left by the previous process")

    def _take_back(self, condition: sa.ColumnElement[bool], now: float, why: str) -> int:
        """Async rows whose acceptance by the relay was recorded become sent; the
        other async rows go back to queued, due when they were before the claim, so
        that they go ahead of what was accepted since (the attempt counts: it may
        have reached the relay); sync rows fail: we never finish a sync send in the
        background."""
        released = {"lease_until": None, "owner": None, "updated_at": now}
        accepted = (
            sa.select(_a.finished_at)
            .where(_a.message_id == _m.id, _a.number == _m.attempts, _a.outcome == "sent")
            .limit(1)
            .scalar_subquery()
        )
        with self._tx() as conn:
            sent = conn.execute(
                messages_table.update()
                .where(condition, _m.mode == "async", accepted.is_not(None))
                .values(
                    status="sent", sent_at=accepted, last_error=None, last_code=None, **released
                )
            ).rowcount
            requeued = conn.execute(
                messages_table.update()
                .where(condition, _m.mode == "async")
                .values(status="queued", **released)
            ).rowcount
            failed = conn.execute(
                messages_table.update()
                .where(condition, _m.mode == "sync")
                .values(status="failed", last_error=INTERRUPTED_SYNC_ERROR, **released)
            ).rowcount
            if failed and self.webhook_state is not None:
                # The events of the rows this UPDATE failed (their time is this
                # `now`), read after it: another instance's take-back at the same
                # moment fails other rows, so no row gets two.
                conn.execute(
                    events_table.insert().from_select(
                        ["message_id", "type", "at", "detail", "webhook"],
                        sa.select(
                            _m.id,
                            sa.literal("message.failed"),
                            sa.literal(now),
                            sa.literal(INTERRUPTED_SYNC_ERROR),
                            sa.literal(self.webhook_state, sa.String),
                        ).where(
                            _m.mode == "sync",
                            _m.status == "failed",
                            _m.updated_at == now,
                            _m.last_error == INTERRUPTED_SYNC_ERROR,
                        ),
                    )
                )
        if sent or requeued or failed:
            log.warning(
                "took back claims (%s): %d async message(s) the relay had taken recorded "
                "as sent, %d re-queued, %d sync message(s) marked failed",
                why,
                sent,
                requeued,
                failed,
            )
        return int(sent) + int(requeued) + int(failed)

    def count_unfinished(self) -> int:
        """Async messages queued or sending (the backlog QUEUE_MAXSIZE bounds)."""
        query = (
            sa.select(sa.func.count())
            .select_from(messages_table)
            .where(_m.status.in_(("queued", "sending")), _m.mode == "async")
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

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
