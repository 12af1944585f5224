"""FakeSMTPServer.wait_for(predicate): the first message, held or arriving, that matches."""

from __future__ import annotations

import threading
import time

import pytest

from fakesmtp import CapturedMessage, FakeSMTPServer
from tests.fakesmtp.helpers import send_message

pytestmark = pytest.mark.unit


def test_a_message_already_held_is_returned_oldest_match_first(fakesmtp: FakeSMTPServer) -> None:
    for subject in ("order 1", "invoice", "order 2"):
        send_message(fakesmtp, subject)
    found = fakesmtp.wait_for(lambda m: (m.subject or "").startswith("order"), timeout=0)
    assert found.subject == "order 1"


def test_a_message_arriving_while_it_waits_is_returned(fakesmtp: FakeSMTPServer) -> None:
    """Sent only once wait_for looks at what is held, so it can only arrive as news."""
    send_message(fakesmtp, "unrelated")
    looking = threading.Event()

    def welcome(message: CapturedMessage) -> bool:
        looking.set()
        return message.subject == "welcome"

    def send() -> None:
        assert looking.wait(5)
        send_message(fakesmtp, "also unrelated")
        send_message(fakesmtp, "welcome", to="ana@example.com")

    sender = threading.Thread(target=send)
    sender.start()
    found = fakesmtp.wait_for(welcome, timeout=5)
    sender.join()
    assert (found.subject, found.header("To")) == ("welcome", "ana@example.com")


def test_no_match_is_a_timeout_error_saying_what_it_waited_for_and_what_came(
    fakesmtp: FakeSMTPServer,
) -> None:
    send_message(fakesmtp, "something else")

    def is_the_reset_mail(message: CapturedMessage) -> bool:
        return message.subject == "Reset your password"

    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        fakesmtp.wait_for(is_the_reset_mail, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2
    assert str(raised.value) == (
        "no captured message matched "
        "test_no_match_is_a_timeout_error_saying_what_it_waited_for_and_what_came"
        ".<locals>.is_the_reset_mail within 0.2s; 1 held (newest first: 'something else')"
    )


def test_an_error_in_the_predicate_reaches_the_caller(fakesmtp: FakeSMTPServer) -> None:
    send_message(fakesmtp, "x")

    def broken(message: CapturedMessage) -> bool:
        raise KeyError("no such header")

    with pytest.raises(KeyError, match="no such header"):
        fakesmtp.wait_for(broken, timeout=1)


def test_counting_still_works_by_name_and_with_an_int(fakesmtp: FakeSMTPServer) -> None:
    send_message(fakesmtp, "a")
    send_message(fakesmtp, "b")
    assert [m.subject for m in fakesmtp.wait_for_count(2, timeout=1)] == ["b", "a"]
    assert [m.subject for m in fakesmtp.wait_for(2, timeout=1)] == ["b", "a"]
    with pytest.raises(TimeoutError, match="expected at least 3 message"):
        fakesmtp.wait_for_count(3, timeout=0.1)
