"""The timeline read from a message row and its attempt log."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from service.timeline import timeline

pytestmark = pytest.mark.unit


def row(**fields: Any) -> Any:
    values = {
        "mode": "async",
        "status": "queued",
        "created_at": 100.0,
        "updated_at": 100.0,
        "send_at": None,
        "last_error": None,
        "last_code": None,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def attempt(outcome: str, at: float, code: int | None = None, error: str | None = None) -> Any:
    return SimpleNamespace(outcome=outcome, finished_at=at, code=code, error=error)


def kinds(events: list[Any]) -> list[tuple[str, float]]:
    return [(e.type, e.at) for e in events]


def test_retries_used_up_end_in_failed_not_deferred() -> None:
    attempts = [attempt("temporary", 101, 451, "451 a"), attempt("temporary", 102, 452, "452 b")]
    events = timeline(row(status="failed", attempts=2), attempts)
    assert kinds(events) == [
        ("message.queued", 100),
        ("message.deferred", 101),
        ("message.failed", 102),
    ]
    assert (events[2].code, events[2].detail) == (452, "452 b")


def test_a_temporary_failure_waiting_for_its_retry_is_deferred() -> None:
    events = timeline(row(status="queued"), [attempt("temporary", 101, 451)])
    assert kinds(events) == [("message.queued", 100), ("message.deferred", 101)]


def test_scheduled_then_queued_at_its_time_then_sent() -> None:
    events = timeline(row(status="sent", send_at=160.0), [attempt("sent", 161)])
    assert kinds(events) == [
        ("message.scheduled", 100),
        ("message.queued", 160),
        ("message.sent", 161),
    ]


def test_cancelled_while_scheduled_never_queued() -> None:
    events = timeline(row(status="cancelled", send_at=160.0, updated_at=120.0), [])
    assert kinds(events) == [("message.scheduled", 100), ("message.cancelled", 120)]


def test_a_sync_send_cut_by_a_crash_fails_with_the_records_error() -> None:
    events = timeline(row(mode="sync", status="failed", updated_at=130.0, last_error="gone"), [])
    assert kinds(events) == [("message.queued", 100), ("message.failed", 130)]
    assert events[1].detail == "gone"


def bounce(at: float, recipient: str) -> Any:
    return SimpleNamespace(
        type="message.bounced", at=at, code=550, detail="5.1.1 gone", recipient=recipient
    )


def test_bounces_from_the_events_table_come_after_the_sent_attempt_in_time() -> None:
    events = timeline(
        row(status="bounced"),
        [attempt("sent", 101)],
        [bounce(150, "a@x.org"), bounce(150, "b@x.org")],
    )
    assert kinds(events) == [
        ("message.queued", 100),
        ("message.sent", 101),
        ("message.bounced", 150),
        ("message.bounced", 150),
    ]
    assert [e.recipient for e in events[2:]] == ["a@x.org", "b@x.org"]
