"""Where a request's blocking work runs (service.api.offload): SMTP work in daemon
threads within the slot limit, SQLite calls inline, a server database's off the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service import db
from service.api.offload import DaemonThreads, database_call, run_in_daemon_thread
from service.config import Settings
from tests.helpers import wait_until

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


def test_daemon_threads_are_reused_run_side_by_side_and_leave_when_idle() -> None:
    threads = DaemonThreads("test-work", idle_seconds=0.3)
    ran: list[threading.Thread] = []
    done = threading.Event()
    threads.submit(lambda: (ran.append(threading.current_thread()), done.set()))
    assert done.wait(5)
    first = ran[0]
    assert first.daemon
    wait_until(lambda: _idle(threads) == 1, timeout=5, what="idle")
    # Sequential work goes to the idle thread instead of a new one.
    done.clear()
    threads.submit(lambda: (ran.append(threading.current_thread()), done.set()))
    assert done.wait(5)
    assert ran[1] is first
    # Work submitted while the only idle thread is counted on gets a thread of its
    # own: two blocked tasks both start (neither waits for the other).
    wait_until(lambda: _idle(threads) == 1, timeout=5, what="idle again")
    both = threading.Barrier(2, timeout=5)
    finished = threading.Semaphore(0)
    for _ in range(2):
        threads.submit(lambda: (both.wait(), finished.release()))
    assert finished.acquire(timeout=5)
    assert finished.acquire(timeout=5)
    # Idle for longer than idle_seconds, every thread leaves.
    wait_until(
        lambda: not any(t.name == "test-work" for t in threading.enumerate()),
        timeout=5,
        what="idle threads gone",
    )


def _idle(threads: DaemonThreads) -> int:
    return threads._idle


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
