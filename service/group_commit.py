"""Group commit for the accept path: concurrent inserts share one transaction.

Each accepted message is one INSERT and one COMMIT. A commit costs more than
the insert (the WAL append and its bookkeeping), and under load many requests
commit at the same moment. A single writer thread takes every insert waiting
in its queue, writes them in one transaction, and then answers each request:
the 202 still comes only after that request's row is committed. With one
request at a time the batch is one row, so nothing waits for a batch to fill.
It also keeps database work off the event loop, so a slow commit (PostgreSQL
over a network, SQLite under contention) no longer stalls every connection.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

from service.db import NewMessage, Outbox

__all__ = ["GroupCommitter"]

logger = logging.getLogger(__name__)

# Large enough to absorb a burst from every connection of a busy server, small
# enough that one transaction stays short.
MAX_BATCH = 128

_Item = tuple[
    NewMessage, asyncio.Future[None], asyncio.AbstractEventLoop, Callable[[], None] | None
]


class GroupCommitter:
    def __init__(self, outbox: Outbox, *, max_batch: int = MAX_BATCH) -> None:
        self._outbox = outbox
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit what is waiting, then end the writer thread."""
        self._queue.put(None)
        self._thread.join()

    async def insert(
        self, message: NewMessage, on_commit: Callable[[], None] | None = None
    ) -> None:
        """Return once `message` is committed; raise what Outbox.insert would.

        `on_commit` runs in the writer thread right after the commit, so it runs
        even if the request is cancelled (client gone) while waiting: the accept
        path hands the id to the delivery threads there, and a committed message
        is never left out of the queue.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((message, future, loop, on_commit))
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
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[_Item]) -> None:
        try:
            results: list[Exception | None] = self._outbox.insert_many([m for m, *_ in batch])
        except Exception as exc:  # a bug, not a database error: fail the batch, keep running
            logger.exception("group commit failed")
            results = [exc] * len(batch)
        for (_, future, loop, on_commit), result in zip(batch, results, strict=True):
            if result is None and on_commit is not None:
                try:
                    on_commit()
                except Exception as exc:  # keep answering the rest of the batch
                    logger.exception("on_commit callback failed")
                    result = exc
            loop.call_soon_threadsafe(_resolve, future, result)


def _resolve(future: asyncio.Future[None], result: Exception | None) -> None:
    if future.cancelled():  # the client went away; the row is committed all the same
        return
    if result is None:
        future.set_result(None)
    else:
        future.set_exception(result)
