"""MailQueueWorker: a bounded in-memory queue of ids and the delivery threads.

INTERFACE STUB written by the lead; the outbox owner fills it in.

The database is the truth; the queue.Queue only carries ids so that memory
stays flat with a large backlog. A scheduler thread re-queues retries when
they are due and messages whose lease expired (a dead process's).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings
    from service.db import Outbox
    from service.mailer import RenderedMessage, SendResult


class QueueFull(Exception):
    """The backlog bound (QUEUE_MAXSIZE) is reached; answer 503 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The worker is stopping and takes no new work; answer 503."""


class Sender:
    """What a delivery thread sends with: one per thread (SMTPConnection satisfies it)."""

    def send(self, message: RenderedMessage) -> SendResult:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class MailQueueWorker:
    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        *,
        sender_factory: Callable[[], Sender],
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start WORKER_CONCURRENCY delivery threads and the scheduler; load the backlog."""
        raise NotImplementedError

    def stop(self, grace: float) -> None:
        """Stop taking work; let deliveries in flight finish within `grace` seconds;
        leave the rest queued in the database."""
        raise NotImplementedError

    def reserve(self) -> None:
        """Take one slot of the backlog bound before inserting. Raises QueueFull / ShuttingDown."""
        raise NotImplementedError

    def release(self) -> None:
        """Give back a slot whose insert failed."""
        raise NotImplementedError

    def enqueue(self, message_id: str) -> None:
        """Hand a committed message's id to the delivery threads (never blocks)."""
        raise NotImplementedError

    @property
    def backlog(self) -> int:
        """Accepted and unfinished messages this instance counts against QUEUE_MAXSIZE."""
        raise NotImplementedError

    @property
    def queue_depth(self) -> int:
        raise NotImplementedError
