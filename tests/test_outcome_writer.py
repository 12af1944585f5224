"""OutcomeWriter: every outcome waiting when a write starts goes in that write."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from service.errors import DatabaseUnavailable
from service.outcome_writer import OutcomeWriter
from service.types import Outcome

pytestmark = pytest.mark.unit


class GatedOutbox:
    """record_outcomes blocks on `gate` and remembers each write's ids; fails the
    first `failures` writes."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.writes: list[list[str]] = []
        self.failures = failures

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        self.writing.set()
        assert self.gate.wait(5)
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("database is locked")
        self.writes.append([o.id for o in outcomes])


def writer_on(outbox: GatedOutbox, written: list[str]) -> OutcomeWriter:
    def on_written(outcomes: Sequence[Outcome]) -> None:
        written.extend(o.id for o in outcomes)

    return OutcomeWriter(outbox, on_written=on_written, retry_interval=0.01)  # type: ignore[arg-type]


def test_outcomes_waiting_during_a_write_go_together_in_the_next() -> None:
    outbox, written = GatedOutbox(), []
    writer = writer_on(outbox, written)
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
    assert written == ["a", "b", "c", "d"]


def test_a_write_is_retried_until_the_database_answers() -> None:
    outbox, written = GatedOutbox(failures=2), []
    writer = writer_on(outbox, written)
    writer.start()
    assert writer.submit(Outcome(id="a", attempt=1)).wait(5)
    writer.stop(5)
    assert outbox.writes == [["a"]]
    assert outbox.failures == 0


def test_stop_writes_what_is_waiting_then_gives_up_only_past_its_timeout() -> None:
    outbox, written = GatedOutbox(failures=10**6), []
    writer = writer_on(outbox, written)
    writer.start()
    event = writer.submit(Outcome(id="a", attempt=1))
    writer.stop(0.2)  # the database never answers
    assert not event.is_set()
    assert written == []


def test_an_outcome_submitted_after_stop_is_written_inline() -> None:
    outbox, written = GatedOutbox(), []
    writer = writer_on(outbox, written)
    writer.start()
    writer.stop(5)
    assert writer.submit(Outcome(id="late", attempt=1)).is_set()
    assert outbox.writes == [["late"]]
    assert written == ["late"]
