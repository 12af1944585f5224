"""Where a request's blocking work runs: database calls, and SMTP work.

Each keeps the event loop free for the other requests, in the way that costs
least for that work.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from starlette.concurrency import run_in_threadpool

from service.db import Outbox

__all__ = ["SMTP_REQUEST_THREADS", "DaemonThreads", "database_call", "run_in_daemon_thread"]

T = TypeVar("T")

# At most this many threads doing SMTP work for requests at once (as many as the
# thread pool it replaces: anyio's default); further requests wait their turn.
SMTP_REQUEST_THREADS = 40


async def database_call(outbox: Outbox, fn: Callable[..., T], *args: Any) -> T:
    """Run a database call for a request: inline with SQLite, in the thread pool with
    a server database.

    A local SQLite read takes microseconds, less than a hop to a thread. A server
    database costs a network round trip, and an unreachable one CONNECT_TIMEOUT
    seconds: on the event loop either would stop every other request.
    """
    if outbox.is_sqlite:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


class DaemonThreads:
    """Daemon threads for blocking work, started when none is idle and kept while
    work comes (each leaves after `idle_seconds` without any).

    Starting a thread per call cost the event loop ~80 µs a /send: Thread.start()
    waits until the new thread runs, and that thread then holds the interpreter
    until its first I/O. Handing work to an idle thread is a queue put. How many run
    at once is bounded by the caller (run_in_daemon_thread's `slots`)."""

    def __init__(self, name: str, *, idle_seconds: float = 60.0) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # idle threads no submit has counted on yet

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread's: it takes this work from the queue
                spawn = False
            else:
                spawn = True
        self._work.put(work)
        if spawn:
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                work = self._work.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody counts on an idle thread: one may leave
                        self._idle -= 1
                        return
                continue  # a submit counted on this thread: its work is on the way
            work()
            with self._lock:
                self._idle += 1


# Shared by every app in the process (tests build many): threads are interchangeable.
_SMTP_THREADS = DaemonThreads("smtp-request")


async def run_in_daemon_thread(slots: asyncio.Semaphore, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking SMTP work in a daemon thread (DaemonThreads) and await its result.

    Not the standard thread pool: the interpreter waits for its (non-daemon) workers at
    exit, so one /send stuck on a silent relay would hold a SIGTERM'd process
    for SMTP_TIMEOUT and every retry after it. A daemon thread is abandoned when
    the request is cancelled at the end of the grace period; the message's row
    stays in `sending` and its lease turns it into "interrupted".
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting request
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    async with slots:
        _SMTP_THREADS.submit(run)
        return await future
