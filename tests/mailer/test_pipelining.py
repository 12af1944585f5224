"""PIPELINING (RFC 2920): the envelope in one write, replies matched in order, an
owed RSET sent with the next envelope; with CHUNKING (RFC 3030) the message goes in
that write too. Round trips are counted as the client's writes that wait for a
reply: two per message where the relay pipelines, one where it also chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from fakesmtp import FakeSMTPServer, FaultRule
from fakesmtp.pytest_plugin import FakeSMTPFactory
from service.errors import ClaimReleased
from service.mailer import PermanentDeliveryError, RejectedRecipient, SMTPConnection
from service.mailer import smtp as mailer_smtp
from tests.mailer.helpers import message, settings_for

pytestmark = pytest.mark.unit

RECIPIENTS = ["a@example.com", "b@example.com", "c@example.com"]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the client makes, as bytes."""
    seen: list[bytes] = []
    real = mailer_smtp.BoundedSMTP.send

    def send(self: mailer_smtp.BoundedSMTP, data: Any) -> None:
        seen.append(data if isinstance(data, bytes) else data.encode(self.command_encoding))
        real(self, data)

    monkeypatch.setattr(mailer_smtp.BoundedSMTP, "send", send)
    return seen


@contextlib.contextmanager
def opened(server: FakeSMTPServer, writes: list[bytes]) -> Iterator[SMTPConnection]:
    """A connection with its session open, the writes of opening it forgotten."""
    connection = SMTPConnection(settings_for(server))
    assert connection.offers("pipelining") is server.options.pipelining
    writes.clear()  # EHLO and friends: the session's, not a message's
    yield connection
    connection.close()


def test_a_message_takes_two_writes_where_the_relay_pipelines(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=False)
    with opened(server, writes) as connection:
        connection.send(message(RECIPIENTS))
        connection.send(message(RECIPIENTS))
    envelope, body, *rest = writes
    assert envelope.split(b"\r\n")[:-1] == [
        envelope.split(b"\r\n")[0],
        b"RCPT TO:<a@example.com>",
        b"RCPT TO:<b@example.com>",
        b"RCPT TO:<c@example.com>",
        b"DATA",
    ]
    assert envelope.startswith(b"MAIL FROM:<sender@example.com>")
    assert body.endswith(b"\r\n.\r\n")
    assert len(rest) == 2 + 1  # the second message, then QUIT
    assert [sorted(m.rcpt_tos) for m in server.wait_for(2)] == [RECIPIENTS, RECIPIENTS]


def test_without_pipelining_every_command_waits_for_its_reply(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=False)
    with opened(server, writes) as connection:
        connection.send(message(RECIPIENTS))
        assert len(writes) == 1 + len(RECIPIENTS) + 1 + 1  # MAIL, RCPTs, DATA, body
    server.wait_for(1)


def test_partial_refusals_are_matched_to_their_recipients(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=False)
    server.add_fault(FaultRule(stage="rcpt", code=550, message="5.1.1 no such user", match="^b@"))
    with opened(server, writes) as connection:
        result = connection.send(message(RECIPIENTS))
    assert result.rejected == [RejectedRecipient("b@example.com", 550, "5.1.1 no such user")]
    [captured] = server.wait_for(1)
    assert sorted(captured.rcpt_tos) == ["a@example.com", "c@example.com"]


def test_the_rset_a_refusal_owes_goes_with_the_next_envelope(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=False)
    server.add_fault(FaultRule(stage="rcpt", code=550, message="5.1.1 nobody", times=1))
    with opened(server, writes) as connection:
        with pytest.raises(PermanentDeliveryError, match=r"5\.1\.1 nobody"):
            connection.send(message(["x@example.com"]))
        assert connection.is_open  # still usable: the RSET is owed, not lost
        refused = len(writes)
        assert refused == 1  # the envelope; the relay refused DATA too, no body went
        connection.send(message(["y@example.com"]))
        assert writes[refused].startswith(b"RSET\r\nMAIL FROM:")
        assert len(writes) == refused + 2
    [captured] = server.wait_for(1)
    assert captured.rcpt_tos == ["y@example.com"]


def test_a_message_takes_one_write_where_the_relay_also_chunks(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=True)
    sent = message(RECIPIENTS)
    with opened(server, writes) as connection:
        assert connection.offers("chunking")
        connection.send(sent)
        connection.send(sent)
    first, second, quit_ = writes
    lines = first.split(b"\r\n")
    assert lines[0].startswith(b"MAIL FROM:<sender@example.com>")
    assert lines[1:4] == [
        b"RCPT TO:<a@example.com>",
        b"RCPT TO:<b@example.com>",
        b"RCPT TO:<c@example.com>",
    ]
    assert lines[4] == b"BDAT %d LAST" % len(sent.data)
    assert first.endswith(b"BDAT %d LAST\r\n" % len(sent.data) + sent.data)  # as it is
    assert second == first
    assert quit_.lower().startswith(b"quit")
    captured = server.wait_for(2)
    assert [m.raw for m in captured] == [sent.data, sent.data]


def test_chunked_partial_refusals_and_the_owed_rset(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=True)
    server.add_fault(FaultRule(stage="rcpt", code=550, message="5.1.1 no such user", match="^b@"))
    with opened(server, writes) as connection:
        result = connection.send(message(RECIPIENTS))
        assert result.rejected == [RejectedRecipient("b@example.com", 550, "5.1.1 no such user")]
        with pytest.raises(PermanentDeliveryError, match=r"5\.1\.1 no such user"):
            connection.send(message(["b@example.com"]))  # every recipient refused
        connection.send(message(["c@example.com"]))
    assert writes[2].startswith(b"RSET\r\nMAIL FROM:")
    assert len(writes) == 3 + 1  # three messages, one write each; QUIT
    assert sorted(sorted(m.rcpt_tos) for m in server.wait_for(2)) == [
        ["a@example.com", "c@example.com"],
        ["c@example.com"],
    ]


def test_a_chunked_message_refused_at_its_end_is_classified_and_not_kept(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=True)
    server.add_fault(FaultRule(stage="message", code=552, message="5.3.4 too big", times=1))
    with opened(server, writes) as connection:
        with pytest.raises(PermanentDeliveryError, match=r"5\.3\.4 too big"):
            connection.send(message(["a@example.com"]))
        connection.send(message(["a@example.com"]))
    assert len(server.wait_for(1)) == 1


def test_the_gate_runs_before_the_one_write_and_a_refusal_sends_nothing(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    """With CHUNKING the write is the message's commit point (its "final dot")."""
    server = fakesmtp_factory(pipelining=True, chunking=True)
    seen_at_gate: list[int] = []

    def gate() -> None:
        seen_at_gate.append(len(writes))

    def refuse() -> None:
        raise ClaimReleased("taken back")

    with opened(server, writes) as connection:
        connection.send(message(["a@example.com"]), gate)
        assert seen_at_gate == [0]
        with pytest.raises(ClaimReleased, match="taken back"):
            connection.send(message(["a@example.com"]), refuse)
        assert len(writes) == 1  # nothing of the refused one went
        connection.send(message(["a@example.com"]))
    assert len(server.wait_for(2)) == 2


def test_the_next_envelope_goes_with_the_final_dot_one_write_a_message(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=False)
    first, second, third = (message([f"r{n}@example.com"]) for n in range(3))
    with opened(server, writes) as connection:
        connection.send(first, next_message=second)
        envelope, body = writes
        assert envelope.endswith(b"RCPT TO:<r0@example.com>\r\nDATA\r\n")
        assert body.startswith(first.data[:20])
        assert body.endswith(
            b"\r\n.\r\nMAIL FROM:<sender@example.com>\r\nRCPT TO:<r1@example.com>\r\nDATA\r\n"
        )
        connection.send(second, next_message=third)
        assert len(writes) == 3  # its envelope went already: one write, the body's
        connection.send(third)
        assert len(writes) == 4
        assert not writes[-1].endswith(b"DATA\r\n")  # nothing announced, nothing ahead
    delivered = sorted(m.rcpt_tos for m in server.wait_for(3))
    assert delivered == [[f"r{n}@example.com"] for n in range(3)]


def test_an_envelope_sent_ahead_for_a_message_not_sent_is_dropped_with_its_session(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    """The relay discards a transaction whose final dot never came: the message
    announced but handed back is not delivered, the one sent instead is."""
    server = fakesmtp_factory(pipelining=True, chunking=False)
    announced, other = message(["announced@example.com"]), message(["other@example.com"])
    with opened(server, writes) as connection:
        connection.send(message(["a@example.com"]), next_message=announced)
        connection.send(other)
        assert connection.connections_opened == 2
    delivered = sorted(m.rcpt_tos for m in server.wait_for(2))
    assert delivered == [["a@example.com"], ["other@example.com"]]


def test_a_refused_dot_with_an_envelope_sent_ahead_starts_the_next_afresh(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    server = fakesmtp_factory(pipelining=True, chunking=False)
    server.add_fault(FaultRule(stage="message", code=552, message="5.3.4 too big", times=1))
    following = message(["next@example.com"])
    with opened(server, writes) as connection:
        with pytest.raises(PermanentDeliveryError, match=r"5\.3\.4 too big"):
            connection.send(message(["a@example.com"]), next_message=following)
        connection.send(following)
        assert connection.connections_opened == 2
    assert [m.rcpt_tos for m in server.wait_for(1)] == [["next@example.com"]]


def test_the_gate_of_a_message_sent_ahead_still_comes_after_its_354(
    fakesmtp_factory: FakeSMTPFactory, writes: list[bytes]
) -> None:
    """A gate that refuses leaves the relay without the final dot: nothing kept."""
    server = fakesmtp_factory(pipelining=True, chunking=False)
    following = message(["next@example.com"])

    def refuse() -> None:
        raise ClaimReleased("taken back")

    with opened(server, writes) as connection:
        connection.send(message(["a@example.com"]), next_message=following)
        with pytest.raises(ClaimReleased, match="taken back"):
            connection.send(following, refuse)
        assert len(writes) == 2  # the first message's two; nothing of the refused one
        assert not connection.is_open
        connection.send(message(["b@example.com"]))
    assert sorted(m.rcpt_tos for m in server.wait_for(2)) == [["a@example.com"], ["b@example.com"]]
