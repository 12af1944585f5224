"""AcceptanceLog: the thread that needs an acceptance recorded writes every one waiting."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from service.acceptance_log import AcceptanceLog
from service.db.store import HeldConnection
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
        self.held = HeldConnection(None, None)  # type: ignore[arg-type]

    def hold_connection(self) -> HeldConnection:
        return self.held

    def record_acceptances(self, outcomes: Sequence[Outcome], held: object = None) -> None:
        self.writing.set()
        assert self.gate.wait(5)
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("database is locked")
        self.writes.append([o.id for o in outcomes])

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        self.whole.append([o.id for o in outcomes])


def log_on(outbox: GatedOutbox) -> AcceptanceLog:
    return AcceptanceLog(outbox, retry_interval=0.01)  # type: ignore[arg-type]


def outcome(name: str) -> Outcome:
    return Outcome(id=name, attempt=1)


def test_the_thread_that_needs_one_writes_every_acceptance_waiting() -> None:
    outbox = GatedOutbox()
    log = log_on(outbox)
    a, b, c = (log.add(outcome(name)) for name in "abc")
    assert outbox.writes == []  # nothing is written until someone needs it
    assert log.record(b, 1)
    assert outbox.writes == [["a", "b", "c"]]
    assert a.recorded
    assert c.recorded
    assert log.record(c, 1)  # already recorded: no second write
    assert outbox.writes == [["a", "b", "c"]]


def test_acceptances_added_during_a_write_go_in_the_next_and_a_waiter_finds_its_own() -> None:
    outbox = GatedOutbox()
    log = log_on(outbox)
    outbox.gate.clear()
    first = log.add(outcome("a"))
    writer = threading.Thread(target=log.record, args=(first, 5))
    writer.start()
    assert outbox.writing.wait(5)
    later = [log.add(outcome(name)) for name in "bc"]
    # A second thread needing `a` waits for the write under way, not a write of its own.
    assert not log.record(first, 0.05)
    outbox.gate.set()
    writer.join(5)
    assert log.record(first, 1)
    assert outbox.writes == [["a"]]
    assert log.record(later[0], 1)
    assert outbox.writes == [["a"], ["b", "c"]]


def test_a_failed_write_puts_the_acceptances_back_for_the_next() -> None:
    outbox = GatedOutbox(failures=2)
    log = log_on(outbox)
    accepted = log.add(outcome("a"))
    assert not log.record(accepted, 0.01)
    assert not log.record(accepted, 0.01)
    assert log.record(accepted, 0.01)
    assert outbox.writes == [["a"]]


def test_writing_hands_what_waits_to_the_batch_record_and_takes_it_back_on_failure() -> None:
    log = log_on(GatedOutbox())
    accepted = log.add(outcome("a"))

    def failing_record() -> None:
        with log.writing() as taken:
            assert [o.id for o in taken] == ["a"]
            raise DatabaseUnavailable("gone")

    with pytest.raises(DatabaseUnavailable):
        failing_record()
    assert not accepted.recorded
    with log.writing() as taken:
        assert [o.id for o in taken] == ["a"]
    assert accepted.recorded
    with log.writing() as taken:
        assert taken == []


def test_close_writes_what_waits_and_gives_up_only_past_its_timeout() -> None:
    outbox = GatedOutbox()
    log = log_on(outbox)
    log.add(outcome("a"))
    assert log.close(5)
    assert outbox.writes == [["a"]]

    never = GatedOutbox(failures=10**6)
    log = log_on(never)
    accepted = log.add(outcome("b"))
    assert not log.close(0.2)  # the database never answers
    assert not accepted.recorded
    assert never.writes == []


def test_an_acceptance_added_after_close_is_written_whole_inline() -> None:
    outbox = GatedOutbox()
    log = log_on(outbox)
    log.close(5)
    assert log.add(outcome("late")).recorded
    assert outbox.whole == [["late"]]
