"""Where a request's blocking work runs (service.api.offload): SMTP work in daemon
threads within the slot limit, SQLite calls inline, a server database's off the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service import db
from service.api.offload import database_call, run_in_daemon_thread
from service.config import Settings

pytestmark = pytest.mark.unit


def test_smtp_work_of_requests_runs_in_daemon_threads_within_the_slot_limit() -> None:
    """No more threads at once than slots; each is a daemon (it cannot hold the exit)."""
    running = 0
    peak = 0
    daemons: list[bool] = []
    lock = threading.Lock()

    def blocking_send(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            daemons.append(threading.current_thread().daemon)
        time.sleep(0.05)
        with lock:
            running -= 1
        return n * 2

    async def main() -> list[int]:
        slots = asyncio.Semaphore(2)
        return await asyncio.gather(
            *(run_in_daemon_thread(slots, blocking_send, n) for n in range(6))
        )

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]
    assert peak == 2
    assert daemons == [True] * 6


def ran_on_the_event_loop(outbox: db.Outbox) -> bool:
    async def probe() -> bool:
        loop_thread = threading.current_thread()
        return await database_call(outbox, lambda: threading.current_thread() is loop_thread)

    return asyncio.run(probe())


def test_sqlite_calls_of_requests_run_on_the_event_loop(app_outbox: db.Outbox) -> None:
    """A local SQLite read is cheaper inline than a hop to a thread."""
    assert app_outbox.is_sqlite
    assert ran_on_the_event_loop(app_outbox) is True


@pytest.mark.postgres
def test_server_database_calls_of_requests_leave_the_event_loop(pg_url: str) -> None:
    """A server database's round trips (its CONNECT_TIMEOUT when unreachable) must not
    stop every other request."""
    engine = db.make_engine(Settings(api_key=["k"], database_url=pg_url))
    try:
        assert ran_on_the_event_loop(db.Outbox(engine)) is False
    finally:
        engine.dispose()
