"""AcceptanceWriter: every acceptance waiting when a write starts goes in that write."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from service.acceptance_writer import LINGER, AcceptanceWriter
from service.errors import DatabaseUnavailable
from service.types import Outcome

pytestmark = pytest.mark.unit


class GatedOutbox:
    """record_acceptances blocks on `gate` and remembers each write's ids; fails the
    first `failures` writes. record_outcomes (the late path) is remembered apart."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.writes: list[list[str]] = []
        self.whole: list[list[str]] = []
        self.failures = failures

    def record_acceptances(self, outcomes: Sequence[Outcome]) -> None:
        self.writing.set()
        assert self.gate.wait(5)
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("database is locked")
        self.writes.append([o.id for o in outcomes])

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        self.whole.append([o.id for o in outcomes])


def writer_on(outbox: GatedOutbox, group: int = 1) -> AcceptanceWriter:
    return AcceptanceWriter(outbox, retry_interval=0.01, group=lambda: group)  # type: ignore[arg-type]


def test_acceptances_waiting_during_a_write_go_together_in_the_next() -> None:
    outbox = GatedOutbox()
    writer = writer_on(outbox)
    writer.start()
    outbox.gate.clear()
    first = writer.submit(Outcome(id="a", attempt=1))
    assert outbox.writing.wait(5)
    later = [writer.submit(Outcome(id=name, attempt=1)) for name in "bcd"]
    assert not first.is_set()
    outbox.gate.set()
    assert all(event.wait(5) for event in [first, *later])
    writer.stop(5)
    assert outbox.writes == [["a"], ["b", "c", "d"]]


def test_one_per_connection_share_a_commit_and_a_waiting_thread_hurries_it() -> None:
    outbox = GatedOutbox()
    writer = writer_on(outbox, group=3)
    writer.start()
    events = [writer.submit(Outcome(id=name, attempt=1)) for name in "abc"]
    assert all(event.wait(5) for event in events)
    assert outbox.writes == [["a", "b", "c"]]  # the group filled: written at once
    lone = writer.submit(Outcome(id="d", attempt=1))
    writer.hurry()  # a delivery thread needs it before its next dot
    assert lone.wait(LINGER * 50)
    started = time.monotonic()
    last = writer.submit(Outcome(id="e", attempt=1))  # nobody waits: LINGER at most
    assert last.wait(5)
    assert time.monotonic() - started < 1.0
    writer.stop(5)
    assert outbox.writes == [["a", "b", "c"], ["d"], ["e"]]


def test_a_write_is_retried_until_the_database_answers() -> None:
    outbox = GatedOutbox(failures=2)
    writer = writer_on(outbox)
    writer.start()
    assert writer.submit(Outcome(id="a", attempt=1)).wait(5)
    writer.stop(5)
    assert outbox.writes == [["a"]]
    assert outbox.failures == 0


def test_stop_writes_what_is_waiting_then_gives_up_only_past_its_timeout() -> None:
    outbox = GatedOutbox(failures=10**6)
    writer = writer_on(outbox)
    writer.start()
    event = writer.submit(Outcome(id="a", attempt=1))
    writer.stop(0.2)  # the database never answers
    assert not event.is_set()
    assert outbox.writes == []


def test_an_acceptance_submitted_after_stop_is_written_whole_inline() -> None:
    outbox = GatedOutbox()
    writer = writer_on(outbox)
    writer.start()
    writer.stop(5)
    assert writer.submit(Outcome(id="late", attempt=1)).is_set()
    assert outbox.whole == [["late"]]
