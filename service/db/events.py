"""The webhooks' side of the events table: claims under a lease, delivered or handed
back, dropped when too old. The events themselves are written with their causes
(delivery.py, accept.py, bounces.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import sqlalchemy as sa

from service.db.schema import events_table, messages_table
from service.db.store import Store
from service.types import PendingEvent

__all__ = ["EventWrites"]

log = logging.getLogger("service.db")

_e = events_table.c
_m = messages_table.c


class EventWrites(Store):
    def any_pending_event(self) -> bool:
        """A read from the index, so that an idle dispatcher's poll takes no write lock."""
        query = sa.select(_e.id).where(_e.webhook == "pending").limit(1)
        with self._read() as conn:
            return conn.execute(query).first() is not None

    def count_pending_events(self, cap: int = 100_000) -> int:
        """Pending events, counted up to `cap` (a scrape must stay cheap however
        far behind the receiver is)."""
        pending = sa.select(_e.id).where(_e.webhook == "pending").limit(cap).subquery()
        query = sa.select(sa.func.count()).select_from(pending)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def claim_events(self, owner: str, limit: int, lease_seconds: float) -> list[PendingEvent]:
        """Up to `limit` pending events nobody holds (or whose holder's lease ran out),
        oldest first, now held by `owner`; with what their webhook's body says of
        the message."""
        now = self._clock()
        free = sa.or_(_e.webhook_lease_until.is_(None), _e.webhook_lease_until < now)
        chosen = (
            sa.select(_e.id)
            .where(_e.webhook == "pending", free)
            # The least tried first: an event the receiver keeps refusing goes to
            # the back instead of being the probe, over and over, that holds up
            # the rest.
            .order_by(_e.webhook_tries, _e.id)
            .limit(limit)
        )
        if self._postgres:
            # Two instances claiming at once neither wait for nor both win a row.
            chosen = chosen.with_for_update(skip_locked=True)
        claim = (
            events_table.update()
            .where(_e.id.in_(chosen.scalar_subquery()))
            .values(webhook_owner=owner, webhook_lease_until=now + lease_seconds)
            .returning(_e.id)
        )
        with self._tx() as conn:
            ids = list(conn.execute(claim).scalars())
            if not ids:
                return []
            rows = conn.execute(
                sa.select(
                    _e.id,
                    _e.message_id,
                    _e.type,
                    _e.at,
                    _e.attempt,
                    _e.code,
                    _e.detail,
                    _e.recipient,
                    _m.message_id.label("header_message_id"),
                    _m.to_addrs,
                    _m.subject,
                    _m.tags,
                    _m.meta,
                    _m.attempts,
                )
                .join(messages_table, _m.id == _e.message_id)
                .where(_e.id.in_(ids))
                .order_by(_e.id)
            ).all()
        return [
            PendingEvent(
                id=row.id,
                record_id=row.message_id,
                type=row.type,
                at=row.at,
                attempts=row.attempt if row.attempt is not None else row.attempts,
                code=row.code,
                detail=row.detail,
                recipient=row.recipient,
                message_id=row.header_message_id,
                to=json.loads(row.to_addrs),
                subject=row.subject,
                tags=json.loads(row.tags) if row.tags else [],
                metadata=json.loads(row.meta) if row.meta else {},
            )
            for row in rows
        ]

    def events_delivered(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        statement = (
            events_table.update()
            .where(_e.id.in_(list(ids)))
            .values(
                webhook="delivered",
                webhook_owner=None,
                webhook_lease_until=None,
                webhook_tries=_e.webhook_tries + 1,
            )
        )
        with self._tx() as conn:
            conn.execute(statement)

    def release_events(self, ids: Sequence[int], owner: str, *, tried: bool = True) -> None:
        """Hand claims back, still pending (the receiver failed, or they were not
        tried before a stop). Only this owner's: a claim whose lease ran out and
        that someone else took is theirs now."""
        if not ids:
            return
        values: dict[str, object] = {"webhook_owner": None, "webhook_lease_until": None}
        if tried:
            values["webhook_tries"] = _e.webhook_tries + 1
        statement = (
            events_table.update()
            .where(_e.id.in_(list(ids)), _e.webhook == "pending", _e.webhook_owner == owner)
            .values(**values)
        )
        with self._tx() as conn:
            conn.execute(statement)

    def take_back_event_claims(self, owner: str) -> int:
        """At start-up: this instance's previous process's claims, at once (safe while
        this process holds the InstanceLock, as for messages)."""
        statement = (
            events_table.update()
            .where(_e.webhook == "pending", _e.webhook_owner == owner)
            .values(webhook_owner=None, webhook_lease_until=None)
        )
        with self._tx() as conn:
            return max(int(conn.execute(statement).rowcount), 0)

    def drop_old_events(self, older_than: float) -> int:
        """Pending events made before `older_than` are given up (WEBHOOK_MAX_AGE)."""
        stale = sa.and_(_e.webhook == "pending", _e.at < older_than)
        with self._read() as conn:
            if conn.execute(sa.select(_e.id).where(stale).limit(1)).first() is None:
                return 0
        with self._tx() as conn:
            dropped = max(
                int(
                    conn.execute(
                        events_table.update().where(stale).values(webhook="dropped")
                    ).rowcount
                ),
                0,
            )
        if dropped:
            log.warning("dropped %d webhook event(s) older than WEBHOOK_MAX_AGE", dropped)
        return dropped
