"""parse_bounce (service.bounces.parse): real-world bounces read, broken ones
"unrecognised", and no input that makes it raise or run long."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.bounces import (
    MAX_BYTES,
    MAX_DIAGNOSTIC,
    MAX_RECIPIENTS,
    Bounce,
    BouncedRecipient,
    heuristics,
    parse_bounce,
)

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*.eml"))
MESSAGE_ID = "<0192a4c6e1f07c3d9a8b2e4f6a1c3e5b@example.com>"
UNRECOGNISED = Bounce(recipients=(), original_message_id=None, format="unrecognised")


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def dsn(*blocks: str, returned: str = f"Message-ID: {MESSAGE_ID}\n") -> bytes:
    """A minimal RFC 3464 report: one recipient block per argument, then the returned
    message's headers."""
    status = "\n".join(["Reporting-MTA: dns; mx.example.org\n", *blocks])
    return (
        "From: MAILER-DAEMON@mx.example.org\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n"
        "\n"
        "--B\n"
        "Content-Type: text/plain\n"
        "\n"
        "Your message could not be delivered.\n"
        "\n"
        "--B\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        f"{status}\n"
        "--B\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        f"{returned}"
        "\n"
        "--B--\n"
    ).encode()


def block(recipient: str, action: str, status: str | None = None, diagnostic: str = "") -> str:
    lines = [f"Final-Recipient: rfc822; {recipient}", f"Action: {action}"]
    if status is not None:
        lines.append(f"Status: {status}")
    if diagnostic:
        lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
    return "\n".join(lines) + "\n"


def check_shape(bounce: Bounce) -> None:
    """What any answer holds to, whatever the input: short, one-line, plain strings."""
    assert bounce.format in ("rfc3464", "other", "unrecognised")
    if bounce.format == "unrecognised":
        assert bounce == UNRECOGNISED
    assert len(bounce.recipients) <= MAX_RECIPIENTS
    if bounce.original_message_id is not None:
        assert re.fullmatch(r"<[^<>\s]+>", bounce.original_message_id)
    for recipient in bounce.recipients:
        assert recipient.action in ("failed", "delayed")
        local, _, domain = recipient.recipient.rpartition("@")
        assert local
        assert domain
        assert not re.search(r"[\s<>]", recipient.recipient)
        assert recipient.status is None or re.fullmatch(r"[245]\.\d+\.\d+", recipient.status)
        if recipient.diagnostic is not None:
            assert 0 < len(recipient.diagnostic) <= MAX_DIAGNOSTIC
            assert not re.search(r"[\x00-\x1f\x7f]", recipient.diagnostic)
        if bounce.format == "other":
            assert recipient.status is None
            assert recipient.diagnostic is None
        # Fit to store and to send on as JSON: no surrogate escapes left.
        for text in (recipient.recipient, recipient.diagnostic or ""):
            text.encode("utf-8")


def test_a_postfix_report_gives_the_recipient_status_diagnostic_and_message_id() -> None:
    assert parse_bounce(sample("postfix_failed.eml")) == Bounce(
        recipients=(
            BouncedRecipient(
                recipient="nobody@example.org",
                status="5.1.1",
                action="failed",
                diagnostic="550 5.1.1 <nobody@example.org>: Recipient address rejected: "
                "User unknown in virtual mailbox table",
            ),
        ),
        original_message_id=MESSAGE_ID,
        format="rfc3464",
    )


def test_a_delayed_report_is_a_temporary_failure() -> None:
    bounce = parse_bounce(sample("postfix_delayed.eml"))
    assert bounce.format == "rfc3464"
    (recipient,) = bounce.recipients
    assert recipient == BouncedRecipient(
        recipient="slow@example.com",
        status="4.4.1",
        action="delayed",
        diagnostic="connect to mx.example.com[198.51.100.7]:25: Connection timed out",
    )
    assert not recipient.permanent


def test_only_the_failed_recipient_of_a_report_counts_not_the_delivered_one() -> None:
    bounce = parse_bounce(sample("sendmail_two_recipients.eml"))
    assert bounce == Bounce(
        recipients=(
            BouncedRecipient(
                recipient="Alice@Example.NET",
                status="5.2.2",
                action="failed",
                diagnostic="552 5.2.2 Mailbox full",
            ),
        ),
        original_message_id=MESSAGE_ID,  # from the message/rfc822 copy
        format="rfc3464",
    )


def test_a_global_report_gives_its_utf8_recipient() -> None:
    bounce = parse_bounce(sample("postfix_global_utf8.eml"))
    assert bounce == Bounce(
        recipients=(
            BouncedRecipient(
                recipient="ユーザー@例え.jp",
                status="5.1.1",
                action="failed",
                diagnostic="550 5.1.1 ユーザー不明",
            ),
        ),
        original_message_id=MESSAGE_ID,
        format="rfc3464",
    )


def test_an_exim_bounce_is_read_by_flufl_as_a_permanent_failure() -> None:
    bounce = parse_bounce(sample("exim.eml"))
    assert bounce == Bounce(
        recipients=(BouncedRecipient("gone@example.net", None, "failed", None),),
        original_message_id=None,  # the copy is inline text, not a message/rfc822 part
        format="other",
    )
    assert bounce.recipients[0].permanent


def test_a_qmail_bounce_gives_every_recipient_sorted() -> None:
    assert parse_bounce(sample("qmail.eml")) == Bounce(
        recipients=(
            BouncedRecipient("other@qmail.example.com", None, "failed", None),
            BouncedRecipient("someone@qmail.example.com", None, "failed", None),
        ),
        original_message_id=None,
        format="other",
    )


def test_a_warning_flufl_recognises_is_a_delay() -> None:
    bounce = parse_bounce(sample("gmail_delayed.eml"))
    assert bounce.format == "other"
    assert bounce.recipients == (BouncedRecipient("late@example.com", None, "delayed", None),)
    assert not bounce.recipients[0].permanent


def test_a_report_whose_delivery_status_is_garbage_is_unrecognised() -> None:
    assert parse_bounce(sample("garbage_status.eml")) == UNRECOGNISED


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_crlf_line_ends_read_the_same_as_lf(name: str) -> None:
    raw = sample(name)
    assert parse_bounce(raw.replace(b"\n", b"\r\n")) == parse_bounce(raw)


def test_a_report_cut_after_its_recipient_block_still_gives_the_recipient() -> None:
    raw = sample("postfix_failed.eml")
    cut = raw[: raw.index(b"Remote-MTA: dns; mx2.example.org")]
    bounce = parse_bounce(cut)
    assert bounce.format == "rfc3464"
    assert bounce.recipients == (BouncedRecipient("nobody@example.org", "5.1.1", "failed", None),)
    assert bounce.original_message_id is None


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.4])
def test_a_report_cut_before_its_recipient_block_is_unrecognised(fraction: float) -> None:
    raw = sample("postfix_failed.eml")
    assert parse_bounce(raw[: int(len(raw) * fraction)]) == UNRECOGNISED


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"\xff\xfe\x00\x80\x81garbage\xc3\x28\xa0\xa1",
        b"Subject: \xe9t\xe9\n\n\xff\xfe not a bounce \x80\n",
        b"Content-Type: multipart/report; boundary=\xff\n\n--\xff\n\xfe\n",
    ],
    ids=["empty", "blank line", "binary", "latin-1", "8-bit boundary"],
)
def test_empty_and_non_utf8_bytes_are_unrecognised(raw: bytes) -> None:
    assert parse_bounce(raw) == UNRECOGNISED


def test_non_utf8_bytes_in_a_report_come_out_as_replacement_characters() -> None:
    raw = dsn(block("ana@example.org", "failed", "5.2.2", "552 boite pleine"))
    (recipient,) = parse_bounce(raw.replace(b"boite", b"bo\xeete")).recipients
    assert recipient.diagnostic == "552 bo\ufffdte pleine"


@pytest.mark.parametrize(
    ("status", "action", "permanent"),
    [
        ("5.1.1", "failed", True),
        ("5.7.1", "delayed", True),
        ("4.2.2", "failed", False),
        ("4.4.1", "delayed", False),
        (None, "failed", True),
        (None, "delayed", False),
    ],
)
def test_permanent_is_status_class_5_or_failed_without_a_status(
    status: str | None, action: str, permanent: bool
) -> None:
    assert BouncedRecipient("a@example.org", status, action, None).permanent is permanent


def test_fields_are_read_as_mtas_write_them() -> None:
    raw = dsn(
        "Final-Recipient: RFC822;<Bob@Example.ORG>\nAction: Failed (bad mailbox)\n"
        "Status: 5.1.1 (user unknown)\n",
        "Final-Recipient: rfc822; carol@example.org\nAction: delayed\nStatus: 4.x.y\n",
        "Original-Recipient: rfc822; dan@example.org\nAction: failed\nStatus: 5.2.1\n",
        block("bob@example.org", "failed", "5.1.1"),  # the same address again
        block("erin@example.org", "relayed"),
        block("frank@example.org", "expanded"),
        block("not an address", "failed", "5.1.1"),
    )
    assert parse_bounce(raw).recipients == (
        BouncedRecipient("Bob@Example.ORG", "5.1.1", "failed", None),
        BouncedRecipient("carol@example.org", None, "delayed", None),
        BouncedRecipient("dan@example.org", "5.2.1", "failed", None),
    )


def test_a_report_naming_only_delivered_recipients_is_a_report_of_no_bounce() -> None:
    bounce = parse_bounce(dsn(block("ana@example.org", "delivered", "2.0.0")))
    assert bounce == Bounce(recipients=(), original_message_id=MESSAGE_ID, format="rfc3464")


def test_a_long_folded_diagnostic_is_one_bounded_line() -> None:
    diagnostic = "550 5.1.1 " + "\n    ".join(["no such user\x07 here"] * 2000)
    (recipient,) = parse_bounce(
        dsn(block("a@example.org", "failed", "5.1.1", diagnostic))
    ).recipients
    assert recipient.diagnostic is not None
    assert len(recipient.diagnostic) == MAX_DIAGNOSTIC
    assert recipient.diagnostic.startswith("550 5.1.1 no such user here no such user here")


def test_at_most_max_recipients_are_kept() -> None:
    blocks = [block(f"user{n}@example.org", "failed", "5.1.1") for n in range(3 * MAX_RECIPIENTS)]
    bounce = parse_bounce(dsn(*blocks))
    assert [r.recipient for r in bounce.recipients] == [
        f"user{n}@example.org" for n in range(MAX_RECIPIENTS)
    ]


def test_nothing_after_max_bytes_is_read() -> None:
    padding = b"X-Padding: " + b"x" * MAX_BYTES + b"\n"
    assert parse_bounce(padding + sample("postfix_failed.eml")) == UNRECOGNISED


def test_a_report_nested_in_a_multipart_mixed_is_found() -> None:
    inner = sample("postfix_failed.eml")
    report_at = inner.index(b"Content-Type: multipart/report")
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\n"
        b"Content-Type: multipart/mixed; boundary=OUTER\n\n"
        b"--OUTER\nContent-Type: text/plain\n\nA disclaimer.\n\n--OUTER\n"
        + inner[report_at:]
        + b"\n--OUTER--\n"
    )
    assert parse_bounce(raw) == parse_bounce(inner)


def test_a_report_inside_the_returned_message_is_not_taken_for_the_bounce() -> None:
    returned = sample("postfix_failed.eml")
    raw = (
        b"From: someone@example.org\n"
        b"Content-Type: multipart/mixed; boundary=OUTER\n\n"
        b"--OUTER\nContent-Type: text/plain\n\nForwarding this.\n\n"
        b"--OUTER\nContent-Type: message/rfc822\n\n" + returned + b"\n--OUTER--\n"
    )
    assert parse_bounce(raw).format != "rfc3464"


def test_a_detector_that_raises_makes_the_bounce_unrecognised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def raising(msg: object) -> object:
        raise IndexError("list index out of range")

    monkeypatch.setattr(heuristics, "all_failures", raising)
    with caplog.at_level(logging.WARNING, logger="service.bounces.parse"):
        assert parse_bounce(sample("exim.eml")) == UNRECOGNISED
    assert "flufl.bounce failed on this mail (IndexError)" in caplog.text


def test_a_bounce_without_from_reaches_every_detector(caplog: pytest.LogCaptureFixture) -> None:
    # flufl.bounce's Yale detector raises on a message without From, and the detectors
    # after it (qmail's among them) would not run.
    raw = sample("qmail.eml").replace(b"From: MAILER-DAEMON@qmail.example.com\n", b"")
    with caplog.at_level(logging.WARNING):
        bounce = parse_bounce(raw)
    assert [r.recipient for r in bounce.recipients] == [
        "other@qmail.example.com",
        "someone@qmail.example.com",
    ]
    assert not caplog.records


def test_a_charset_that_is_garbage_does_not_stop_the_detectors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = sample("qmail.eml").replace(
        b"Subject: failure notice\n",
        b"Subject: failure notice\nContent-Type: text/plain; charset=utf\x00x\n",
    )
    raw = raw.replace(b"Sorry, no mailbox", b"D\xe9sol\xe9, no mailbox")
    with caplog.at_level(logging.WARNING):
        assert len(parse_bounce(raw).recipients) == 2
    assert not caplog.records


# What the regular expressions of flufl.bounce's detectors are slowest on: their start
# lines, then long lines of "<" (for `<[^>]*>`) and of letters (for `[^\s@]+@`).
HOSTILE_START = (
    b"\n"
    b"A message that you sent could not be delivered\n"
    b"Sorry, unable to deliver your message to\n"
    b"Your message could not be delivered to\n"
    b"Delivery to the following recipients failed\n"
)


# Each built when its test runs: some are megabytes.
HOSTILE: dict[str, Callable[[], bytes]] = {
    "long < line": lambda: HOSTILE_START + b"<" * MAX_BYTES,
    "long letter line": lambda: HOSTILE_START + b"a" * MAX_BYTES,
    "many long lines": lambda: HOSTILE_START + (b"<" * 2000 + b"\n" + b"a" * 2000 + b"\n") * 300,
    "many parts": lambda: (
        b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * 150_000
    ),
    "deep nesting": lambda: b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (n, n) for n in range(5000)
    ),
    "long header": lambda: b"X-Failed-Recipients: " + b"a@example.org, " * 80_000 + b"\n\nx\n",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_bounce_is_read_in_bounded_time(name: str) -> None:
    raw = b"From: MAILER-DAEMON@mx.example.org\n" + HOSTILE[name]()
    # Unbounded, the first of these runs for minutes (a quadratic regular expression in
    # flufl.bounce); bounded, each takes a fraction of a second.
    started = time.perf_counter()
    check_shape(parse_bounce(raw))
    assert time.perf_counter() - started < 3


@given(raw=st.binary(max_size=2048))
def test_any_bytes_give_a_bounce(raw: bytes) -> None:
    check_shape(parse_bounce(raw))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A sample with a few bytes deleted, replaced, inserted or repeated."""
    raw = bytearray(sample(draw(st.sampled_from(SAMPLE_NAMES))))
    for _ in range(draw(st.integers(1, 5))):
        start = draw(st.integers(0, len(raw)))
        end = draw(st.integers(start, min(len(raw), start + 64)))
        how = draw(st.sampled_from(["delete", "replace", "insert", "repeat"]))
        if how == "delete":
            del raw[start:end]
        elif how == "replace":
            raw[start:end] = draw(st.binary(max_size=16))
        elif how == "insert":
            raw[start:start] = draw(
                st.sampled_from([b"\n", b"\n\n", b"--", b";", b"<", b">", b"\x00", b"\xff", b"="])
            )
        else:
            raw[start:start] = raw[start:end] * draw(st.integers(1, 50))
    return bytes(raw)


@settings(max_examples=300)
@given(raw=mutated())
def test_a_mutated_bounce_gives_a_bounce(raw: bytes) -> None:
    check_shape(parse_bounce(raw))


addresses = st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True)
statuses = st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True)
actions = st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"])


@given(
    recipients=st.lists(
        st.tuples(addresses, actions, statuses), max_size=12, unique_by=lambda r: r[0].lower()
    )
)
def test_every_failed_or_delayed_recipient_of_a_report_is_returned_in_order(
    recipients: list[tuple[str, str, str]],
) -> None:
    bounce = parse_bounce(dsn(*(block(*r, diagnostic=f"{r[2]} text") for r in recipients)))
    assert bounce.format == ("rfc3464" if recipients else "unrecognised")
    assert bounce.recipients == tuple(
        BouncedRecipient(address, status, action, f"{status} text")
        for address, action, status in recipients
        if action in ("failed", "delayed")
    )
