"""A message's timeline (`events` in its record), read from what is stored.

The attempt log is written in the same transaction as each outcome (acceptances
before the next final dot, failures with the batch), so the timeline derived from
it never shows an outcome that is not recorded, nor misses one that is. Bounces,
which come after the outcome, are rows of the events table (written with the
record's change to `bounced`). The events table holds every other event too when
a webhook receiver is configured (its outbox), but the timeline reads only the
bounces from it, so that it reads the same with webhooks or without: the
delivery path writes nothing more than its attempt log when nobody listens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.types import Event

__all__ = ["timeline"]


def timeline(row: Any, attempts: Sequence[Any], bounces: Sequence[Any] = ()) -> list[Event]:
    """Oldest first. `row` has the message's mode, status, created_at, updated_at,
    send_at, last_error and last_code; `attempts` its attempt rows (number,
    finished_at, outcome, code, error) in the order they were written; `bounces`
    its message.bounced rows of the events table (type, at, code, detail,
    recipient)."""
    events: list[Event] = []
    scheduled = row.send_at is not None and row.send_at > row.created_at
    cancelled_while_scheduled = (
        scheduled and row.status == "cancelled" and row.updated_at < row.send_at
    )
    if scheduled:
        events.append(Event("message.scheduled", row.created_at))
        if row.status != "scheduled" and not cancelled_while_scheduled:
            events.append(Event("message.queued", row.send_at))
    else:
        events.append(Event("message.queued", row.created_at))
    failed = False
    for n, attempt in enumerate(attempts):
        if attempt.outcome == "sent":
            events.append(Event("message.sent", attempt.finished_at))
            continue
        last = n == len(attempts) - 1
        if attempt.outcome == "permanent" or (last and row.status == "failed"):
            failed = True
            kind = "message.failed"
        else:
            kind = "message.deferred"
        events.append(Event(kind, attempt.finished_at, attempt.code, attempt.error))
    if row.status == "failed" and not failed:
        # No attempt logged (a synchronous send cut by a crash): the record's own error.
        events.append(Event("message.failed", row.updated_at, row.last_code, row.last_error))
    if row.status == "cancelled":
        events.append(Event("message.cancelled", row.updated_at))
    if bounces:
        later = [Event(b.type, b.at, b.code, b.detail, b.recipient) for b in bounces]
        events = sorted([*events, *later], key=lambda e: e.at)  # stable: ties keep order
    return events
