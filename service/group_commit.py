"""Group commit for the accept path: concurrent inserts share one transaction.

Each accepted message is one INSERT and one COMMIT. A commit costs more than
the insert (the WAL append and its bookkeeping), and under load many requests
commit at the same moment. The committer takes every insert waiting, writes them
in one transaction, and then answers each request: the 202 still comes only after
that request's row is committed. With one request at a time the batch is one
row, so nothing waits for a batch to fill.

Where the batch is written depends on the database:

- SQLite (`LoopCommitter`): on the event loop itself, as soon as the requests
  that are ready have run. A local SQLite transaction of a few rows takes tens
  of microseconds; handing it to a thread costs more than that, because the
  thread must win the GIL back from a busy event loop for every step (the
  figures are in docs/benchmarks.md). The price: while SQLite waits for
  another writer's lock (a delivery thread's short transaction), the loop
  waits too.
- A server database (`ThreadCommitter`, PostgreSQL): in a writer thread. A
  commit there is a network round trip, and an unreachable server can take
  CONNECT_TIMEOUT to fail; the event loop must not stop for either.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from service.db import NewMessage, Outbox

__all__ = ["Committer", "LoopCommitter", "ThreadCommitter", "make_committer"]

logger = logging.getLogger(__name__)

# Large enough to absorb a burst from every connection of a busy server, small
# enough that one transaction stays short.
MAX_BATCH = 128

_Item = tuple[NewMessage, asyncio.Future[None], Callable[[], None] | None]


class Committer(Protocol):
    def start(self) -> None: ...

    async def insert(
        self, message: NewMessage, on_commit: Callable[[], None] | None = None
    ) -> None:
        """Return once `message` is committed; raise what Outbox.insert would.

        `on_commit` runs right after the commit, even if the request was cancelled
        (client gone) while waiting: the accept path hands the id to the delivery
        threads there, so a committed message is never left out of the queue.
        """

    async def stop(self) -> None:
        """Commit what is waiting, then stop."""


def make_committer(outbox: Outbox) -> Committer:
    return LoopCommitter(outbox) if outbox.is_sqlite else ThreadCommitter(outbox)


def _write(outbox: Outbox, batch: list[_Item]) -> list[Exception | None]:
    """Insert a batch and run the on_commit callbacks; one result per item."""
    try:
        results: list[Exception | None] = outbox.insert_many([m for m, _, _ in batch])
    except Exception as exc:  # a bug, not a database error: fail the batch, keep running
        logger.exception("group commit failed")
        return [exc] * len(batch)
    for index, ((_, _, on_commit), result) in enumerate(zip(batch, results, strict=True)):
        if result is None and on_commit is not None:
            try:
                on_commit()
            except Exception as exc:  # keep answering the rest of the batch
                logger.exception("on_commit callback failed")
                results[index] = exc
    return results


def _resolve(future: asyncio.Future[None], result: Exception | None) -> None:
    if future.cancelled():  # the client went away; the row is committed all the same
        return
    if result is None:
        future.set_result(None)
    else:
        future.set_exception(result)


class LoopCommitter:
    """Batches written on the event loop (SQLite; see the module docstring)."""

    def __init__(self, outbox: Outbox, *, max_batch: int = MAX_BATCH) -> None:
        self._outbox = outbox
        self._max_batch = max_batch
        self._waiting: list[_Item] = []

    def start(self) -> None:
        pass

    async def insert(
        self, message: NewMessage, on_commit: Callable[[], None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._waiting:
            # After the callbacks already scheduled: every request that is ready now
            # reaches its insert first and joins this batch.
            loop.call_soon(self._flush)
        self._waiting.append((message, future, on_commit))
        await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self._max_batch):
            batch = waiting[start : start + self._max_batch]
            for (_, future, _), result in zip(batch, _write(self._outbox, batch), strict=True):
                _resolve(future, result)

    async def stop(self) -> None:
        self._flush()


class ThreadCommitter:
    """Batches written by one writer thread (server databases)."""

    def __init__(self, outbox: Outbox, *, max_batch: int = MAX_BATCH) -> None:
        self._outbox = outbox
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[_Item, asyncio.AbstractEventLoop] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    async def insert(
        self, message: NewMessage, on_commit: Callable[[], None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(((message, future, on_commit), loop))
        await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    stopping = True
                    break
                batch.append(queued)
            items = [item for item, _ in batch]
            for ((_, future, _), loop), result in zip(
                batch, _write(self._outbox, items), strict=True
            ):
                loop.call_soon_threadsafe(_resolve, future, result)
            if stopping:
                return
