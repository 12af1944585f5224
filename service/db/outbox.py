"""Outbox: all reads and writes of the message log, on SQLite (WAL) or PostgreSQL.

Every state change of a message is one SQL statement or one transaction, written
so that the same text runs on SQLite and PostgreSQL. The hot paths are the
accept path (`insert_many`: the rows of the requests waiting at that moment in
one INSERT batch and one COMMIT, see service/group_commit.py) and the delivery
path (`record_and_claim`: a batch's outcomes and the next batch's claim, one
UPDATE ... RETURNING, in one transaction; `record_acceptances`: the relay's 250s
waiting at that moment, as attempt rows, one small transaction, see
service/acceptance_log.py), so a delivery thread spends its time sending, not
writing. All run on the DBAPI cursor (`statements.DriverStatement`).

Times are stored as float epoch seconds (portable, cheap to compare); the API
layer formats them as ISO 8601.

One class, written in parts by the path that uses them; `Store` holds the
plumbing they share.
"""

from __future__ import annotations

from service.db.accept import AcceptWrites
from service.db.bounces import BounceWrites
from service.db.delivery import DeliveryWrites
from service.db.events import EventWrites
from service.db.reads import Reads
from service.db.suppressions import SuppressionList

__all__ = ["Outbox"]


class Outbox(AcceptWrites, DeliveryWrites, EventWrites, BounceWrites, SuppressionList, Reads):
    """All reads and writes of the message log. Thread-safe (one engine, pooled).

    Every database error surfaces as DatabaseUnavailable, so callers handle one
    exception whether SQLite is locked, the disk is full or PostgreSQL is gone.
    """
