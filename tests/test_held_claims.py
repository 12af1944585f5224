"""HeldClaims: one thread sends, stop() takes back what has not reached its dot."""

from __future__ import annotations

import threading

import pytest

from service.acceptance_log import Acceptance
from service.errors import ClaimReleased
from service.held_claims import HeldClaims, LeaseRunningOut
from service.types import ClaimedMessage, Outcome, RenderedMessage

pytestmark = pytest.mark.unit

FAR = float("inf")


class Recorder:
    """Stands in for the AcceptanceLog: an acceptance is recorded once `written` is set."""

    def __init__(self) -> None:
        self.written = threading.Event()

    def record(self, acceptance: Acceptance, timeout: float) -> bool:
        acceptance.recorded = self.written.wait(timeout)
        return acceptance.recorded


def accepted() -> Acceptance:
    return Acceptance(Outcome(id="m0", attempt=1))


def claimed(n: int) -> list[ClaimedMessage]:
    rendered = RenderedMessage("<m@x>", "a@example.com", ["b@example.com"], b"x\r\n")
    return [ClaimedMessage(id=f"m{i}", attempt=1, rendered=rendered) for i in range(n)]


def test_messages_come_one_at_a_time_in_claim_order() -> None:
    held = HeldClaims(Recorder())
    held.load(claimed(3), dot_deadline=FAR)
    assert [held.next().id, held.next().id, held.next().id] == ["m0", "m1", "m2"]  # type: ignore[union-attr]
    assert held.next() is None


def test_take_back_returns_the_current_message_before_its_dot_and_the_rest() -> None:
    held = HeldClaims(Recorder())
    held.load(claimed(3), dot_deadline=FAR)
    assert held.next() is not None  # m0, in its envelope
    assert [m.id for m in held.take_back()] == ["m1", "m2", "m0"]
    with pytest.raises(ClaimReleased):
        held.before_dot()  # the thread comes back from its envelope: no dot
    assert held.released
    assert held.next() is None


def test_a_message_past_its_dot_is_not_taken_back() -> None:
    held = HeldClaims(Recorder())
    held.load(claimed(2), dot_deadline=FAR)
    held.next()
    held.before_dot()
    assert [m.id for m in held.take_back()] == ["m1"]


def test_the_dot_waits_for_the_previous_outcome() -> None:
    recorder = Recorder()
    held = HeldClaims(recorder)
    held.load(claimed(2), dot_deadline=FAR)
    held.next()
    held.before_dot()
    written = recorder.written
    held.after(accepted())
    held.next()
    passed = threading.Event()
    thread = threading.Thread(target=lambda: (held.before_dot(), passed.set()))
    thread.start()
    assert not passed.wait(0.2)
    written.set()
    assert passed.wait(5)
    thread.join()


def test_a_dot_waiting_for_its_previous_outcome_is_released_by_take_back() -> None:
    held = HeldClaims(Recorder())
    held.load(claimed(2), dot_deadline=FAR)
    held.next()
    held.before_dot()
    held.after(accepted())  # never recorded (the database is away)
    held.next()
    raised: list[BaseException] = []

    def dot() -> None:
        try:
            held.before_dot()
        except ClaimReleased as exc:
            raised.append(exc)

    thread = threading.Thread(target=dot)
    thread.start()
    assert [m.id for m in held.take_back()] == ["m1"]
    thread.join(5)
    assert len(raised) == 1


def test_rest_leaves_the_current_message_and_keeps_the_holder_open() -> None:
    held = HeldClaims(Recorder())
    held.load(claimed(3), dot_deadline=FAR)
    held.next()
    assert [m.id for m in held.rest()] == ["m1", "m2"]
    assert not held.released
    held.before_dot()


def test_a_dot_that_would_go_after_the_lease_deadline_is_abandoned() -> None:
    now = [100.0]
    held = HeldClaims(Recorder(), clock=lambda: now[0])
    held.load(claimed(2), dot_deadline=110.0)
    held.next()
    held.before_dot()
    held.after(accepted())  # the previous acceptance is never recorded
    held.next()
    now[0] = 110.0
    with pytest.raises(LeaseRunningOut):
        held.before_dot()
    assert not held.released  # the message stays claimed; its lease decides
