"""CHUNKING (RFC 3030): BDAT chunks, LAST ends the message as DATA's dot does; a
refused chunk is still read, so its bytes never run as commands."""

from __future__ import annotations

import pytest

from fakesmtp import FakeSMTPServer
from fakesmtp.faults import FaultRule
from fakesmtp.pytest_plugin import FakeSMTPFactory
from tests.fakesmtp.helpers import RawClient, make_message

pytestmark = pytest.mark.unit


def ehlo_keywords(client: RawClient) -> list[bytes]:
    code, lines = client.command(b"EHLO me")
    assert code == 250
    return [line[4:] for line in lines[1:]]


def bdat(client: RawClient, chunk: bytes, *, last: bool = False) -> tuple[int, list[bytes]]:
    header = b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
    client.send(header + chunk)
    return client.reply()


def start_transaction(client: RawClient) -> None:
    assert client.reply()[0] == 220
    assert b"CHUNKING" in ehlo_keywords(client)
    assert client.command(b"MAIL FROM:<s@example.com>")[0] == 250
    assert client.command(b"RCPT TO:<r@example.com>")[0] == 250


def test_chunks_make_one_message_with_the_exact_bytes(fakesmtp: FakeSMTPServer) -> None:
    raw = make_message("in chunks", body="line one\r\n.a line with a leading dot\r\n")
    with RawClient(fakesmtp) as client:
        start_transaction(client)
        code, lines = bdat(client, raw[:40])
        assert (code, lines) == (250, [b"250 2.0.0 40 octets received"])
        assert bdat(client, raw[40:], last=True)[0] == 250
        # The session goes on: a second message, one chunk, pipelined with its envelope.
        client.send(
            b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.com>\r\n"
            + b"BDAT %d LAST\r\n" % len(raw)
            + raw
        )
        assert [client.reply()[0] for _ in range(3)] == [250, 250, 250]
    messages = fakesmtp.messages()
    assert [m.raw for m in messages] == [raw, raw]  # no dot-stuffing to undo
    assert messages[0].subject == "in chunks"


def test_a_chunk_without_recipients_is_refused_and_skipped(fakesmtp: FakeSMTPServer) -> None:
    with RawClient(fakesmtp) as client:
        client.reply()
        ehlo_keywords(client)
        # The chunk holds what would be commands if the server did not read it.
        assert bdat(client, b"QUIT\r\n", last=True)[0] == 503
        assert client.command(b"NOOP")[0] == 250
    assert fakesmtp.messages() == []


def test_rset_discards_the_chunks_so_far(fakesmtp: FakeSMTPServer) -> None:
    with RawClient(fakesmtp) as client:
        start_transaction(client)
        assert bdat(client, b"Subject: dropped\r\n")[0] == 250
        assert client.command(b"RSET")[0] == 250
        assert client.command(b"MAIL FROM:<s@example.com>")[0] == 250
        assert client.command(b"RCPT TO:<r@example.com>")[0] == 250
        assert bdat(client, make_message("kept"), last=True)[0] == 250
    assert [m.subject for m in fakesmtp.messages()] == ["kept"]


def test_a_message_over_the_size_limit_is_refused_at_last(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    server = fakesmtp_factory(max_size=100)
    with RawClient(server) as client:
        start_transaction(client)
        assert bdat(client, b"x" * 80 + b"\r\n")[0] == 250
        assert bdat(client, b"y" * 80 + b"\r\n", last=True)[0] == 552
        assert client.command(b"NOOP")[0] == 250
    assert server.messages() == []


@pytest.mark.parametrize(("stage", "code"), [("data", 451), ("message", 550)])
def test_faults_answer_the_first_chunk_or_the_last(
    fakesmtp: FakeSMTPServer, stage: str, code: int
) -> None:
    """A `data` rule answers where DATA's command would be (the first chunk), a
    `message` rule where the final dot would be (LAST)."""
    fakesmtp.add_fault(FaultRule(stage=stage, action="reply", code=code, times=1))
    with RawClient(fakesmtp) as client:
        start_transaction(client)
        assert bdat(client, make_message("refused"), last=True)[0] == code
        assert client.command(b"NOOP")[0] == 250
    assert fakesmtp.messages() == []


def test_without_chunking_bdat_is_not_offered_or_understood(
    fakesmtp_factory: FakeSMTPFactory,
) -> None:
    server = fakesmtp_factory(chunking=False)
    with RawClient(server) as client:
        client.reply()
        assert b"CHUNKING" not in ehlo_keywords(client)
        assert client.command(b"BDAT 0 LAST")[0] == 500


def test_a_bdat_without_a_size_ends_the_session(fakesmtp: FakeSMTPServer) -> None:
    with RawClient(fakesmtp) as client:
        start_transaction(client)
        assert client.command(b"BDAT LAST")[0] == 501
        assert client.closed_by_server()
