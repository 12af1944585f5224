"""render_message: headers, envelope, MIME structure, folding, IDN, SMTPUTF8, injection."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage, MIMEPart
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.mailer import RenderedMessage, render_message
from service.models import SendRequest

pytestmark = pytest.mark.unit

DEFAULT_FROM = "noreply@localhost"


def make(**fields: Any) -> SendRequest:
    data: dict[str, Any] = {"to": ["ana@example.com"], "subject": "Hi", "body": "Hello\n"}
    data.update(fields)
    return SendRequest.model_validate(data)


def unchecked(**fields: Any) -> SendRequest:
    """A request that skipped the API's validation, as render_message must not trust it."""
    data: dict[str, Any] = {"to": ["ana@example.com"], "subject": "Hi", "body": "Hello\n"}
    data.update(fields)
    if "from" in data:
        data["from_"] = data.pop("from")
    return SendRequest.model_construct(**data)


def parse(rendered: RenderedMessage) -> EmailMessage:
    # The bytes parser reads headers as ASCII; RFC 6532 headers need the text parser.
    if rendered.smtputf8:
        parsed = email.message_from_string(rendered.data.decode(), policy=email.policy.default)
    else:
        parsed = email.message_from_bytes(rendered.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def content(part: MIMEPart) -> str:
    """The decoded text with line endings normalised (the wire form is CRLF)."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def header_lines(data: bytes) -> list[bytes]:
    head, _, _ = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")


def assert_wire_format(data: bytes) -> None:
    """CRLF only, no bare CR or LF, no line over RFC 5322's 998 octets."""
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_standard_headers_are_present_with_our_message_id_domain() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    rendered = render_message(
        make(**{"from": "Shop <shop@example.net>"}, reply_to="help@example.net"),
        default_from=DEFAULT_FROM,
        now=now,
    )
    msg = parse(rendered)
    assert msg["Date"] == "Mon, 06 May 2024 07:08:09 +0000"
    assert msg["From"] == "Shop <shop@example.net>"
    assert msg["To"] == "ana@example.com"
    assert msg["Reply-To"] == "help@example.net"
    assert msg["Subject"] == "Hi"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Message-ID"] == rendered.message_id
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.net>", rendered.message_id)
    assert rendered.mail_from == "shop@example.net"
    assert "Cc" not in msg
    assert_wire_format(rendered.data)


def test_default_sender_is_used_when_request_names_none() -> None:
    rendered = render_message(make(), default_from="Robot <robot@example.org>")
    assert parse(rendered)["From"] == "Robot <robot@example.org>"
    assert rendered.mail_from == "robot@example.org"
    assert rendered.message_id.endswith("@example.org>")


def test_message_ids_are_unique() -> None:
    ids = {render_message(make(), default_from=DEFAULT_FROM).message_id for _ in range(50)}
    assert len(ids) == 50


def test_bcc_is_only_in_the_envelope() -> None:
    rendered = render_message(
        make(to=["a@example.com"], cc=["c@example.com"], bcc=["hidden@example.com"]),
        default_from=DEFAULT_FROM,
    )
    assert b"hidden" not in rendered.data
    assert b"Bcc" not in rendered.data
    assert rendered.rcpt_tos == ["a@example.com", "c@example.com", "hidden@example.com"]
    assert parse(rendered)["Cc"] == "c@example.com"


def test_envelope_is_addr_spec_only_and_deduplicated_in_order() -> None:
    rendered = render_message(
        make(
            to=["Ana <ana@example.com>", "bo@EXAMPLE.com"],
            cc=['"Ana, again" <ana@example.com>', "cy@example.com"],
            bcc=["bo@example.com", "dee@example.com"],
        ),
        default_from=DEFAULT_FROM,
    )
    assert rendered.rcpt_tos == [
        "ana@example.com",
        "bo@example.com",
        "cy@example.com",
        "dee@example.com",
    ]


def test_quoted_display_names_survive_a_round_trip() -> None:
    rendered = render_message(
        make(to=['"Doe, Jane" <jane@example.com>', "Plain Name <p@example.com>"]),
        default_from=DEFAULT_FROM,
    )
    to = parse(rendered)["To"]
    assert [(a.display_name, a.addr_spec) for a in to.addresses] == [
        ("Doe, Jane", "jane@example.com"),
        ("Plain Name", "p@example.com"),
    ]
    assert b'"Doe, Jane" <jane@example.com>' in rendered.data


def test_escaped_quote_in_display_name_is_kept() -> None:
    rendered = render_message(make(to=[r'"Say \"hi\"" <s@example.com>']), default_from=DEFAULT_FROM)
    assert parse(rendered)["To"].addresses[0].display_name == 'Say "hi"'


def test_non_ascii_display_name_is_encoded_and_decodes_back() -> None:
    rendered = render_message(make(to=["Jöhn Müller <j@example.com>"]), default_from=DEFAULT_FROM)
    assert rendered.data.isascii()
    assert parse(rendered)["To"].addresses[0].display_name == "Jöhn Müller"
    assert not rendered.smtputf8


def test_idn_domain_is_punycode_in_envelope_and_headers() -> None:
    rendered = render_message(
        make(to=["Ana <ana@bücher.de>"], **{"from": "shop@bücher.de"}), default_from=DEFAULT_FROM
    )
    assert rendered.rcpt_tos == ["ana@xn--bcher-kva.de"]
    assert rendered.mail_from == "shop@xn--bcher-kva.de"
    assert rendered.message_id.endswith("@xn--bcher-kva.de>")
    assert b"Ana <ana@xn--bcher-kva.de>" in rendered.data
    assert rendered.data.isascii()
    assert not rendered.smtputf8


def test_non_ascii_local_part_needs_smtputf8_and_is_raw_utf8() -> None:
    rendered = render_message(
        make(to=["Ñandú <ñandú@example.com>"], cc=["plain@example.com"]), default_from=DEFAULT_FROM
    )
    assert rendered.smtputf8
    assert rendered.rcpt_tos == ["ñandú@example.com", "plain@example.com"]
    assert "ñandú@example.com".encode() in rendered.data  # RFC 6532: not encoded-words
    assert b"=?utf-8?" not in header_lines(rendered.data)[2]
    msg = parse(rendered)
    assert msg["To"].addresses[0].addr_spec == "ñandú@example.com"
    assert content(msg) == "Hello\n"
    assert_wire_format(rendered.data)


def test_text_only_is_a_single_text_plain_part() -> None:
    msg = parse(render_message(make(body="Hello\nworld\n"), default_from=DEFAULT_FROM))
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()
    assert content(msg) == "Hello\nworld\n"
    assert msg["Content-Transfer-Encoding"] == "7bit"


def test_html_only_is_a_single_text_html_part() -> None:
    msg = parse(render_message(make(body=None, html="<p>Hi</p>"), default_from=DEFAULT_FROM))
    assert msg.get_content_type() == "text/html"
    assert content(msg) == "<p>Hi</p>"


def test_text_and_html_make_multipart_alternative_text_first() -> None:
    rendered = render_message(
        make(body="Plain café\n", html="<p>Ünïcode</p>"), default_from=DEFAULT_FROM
    )
    msg = parse(rendered)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert content(parts[0]) == "Plain café\n"
    assert content(parts[1]) == "<p>Ünïcode</p>"
    assert all("MIME-Version" not in p for p in parts)
    assert rendered.data.count(b"MIME-Version") == 1
    assert_wire_format(rendered.data)


def test_text_and_html_on_the_smtputf8_path_are_multipart_too() -> None:
    rendered = render_message(
        make(to=["ü@example.com"], body="text\n", html="<b>html</b>"), default_from=DEFAULT_FROM
    )
    msg = parse(rendered)
    assert msg.get_content_type() == "multipart/alternative"
    assert [content(p) for p in msg.iter_parts()] == ["text\n", "<b>html</b>\n"]


def test_html_only_on_the_smtputf8_path() -> None:
    rendered = render_message(
        make(to=["ü@example.com"], body=None, html="<b>html</b>"), default_from=DEFAULT_FROM
    )
    assert parse(rendered).get_content_type() == "text/html"


def test_non_ascii_body_is_encoded_7bit_safe_and_decodes_back() -> None:
    for body in ("Grüße aus Köln\n", "日本語のテキストです。" * 20 + "\n"):
        rendered = render_message(make(body=body), default_from=DEFAULT_FROM)
        assert rendered.data.isascii()
        msg = parse(rendered)
        assert msg["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        assert content(msg) == body


def test_mostly_ascii_body_uses_quoted_printable_and_cjk_base64() -> None:
    text = "Grüße aus Köln, wir freuen uns auf Ihren Besuch.\n"
    qp = parse(render_message(make(body=text), default_from=DEFAULT_FROM))
    b64 = parse(render_message(make(body="日本語" * 30), default_from=DEFAULT_FROM))
    assert qp["Content-Transfer-Encoding"] == "quoted-printable"
    assert b64["Content-Transfer-Encoding"] == "base64"


def test_overlong_body_line_is_encoded_not_sent_raw() -> None:
    body = "x" * 5000 + "\nshort\n"
    rendered = render_message(make(body=body), default_from=DEFAULT_FROM)
    assert_wire_format(rendered.data)
    assert content(parse(rendered)) == body


def test_body_lines_starting_with_from_or_dot_are_not_altered() -> None:
    body = "From here on\n.leading dot\n..two dots\n"
    rendered = render_message(make(body=body), default_from=DEFAULT_FROM)
    assert b"\r\nFrom here on\r\n.leading dot\r\n..two dots\r\n" in rendered.data
    assert b">From" not in rendered.data


def test_long_subject_is_folded_under_78_columns_and_unfolds_to_itself() -> None:
    subject = " ".join(f"word{i}" for i in range(60))
    rendered = render_message(make(subject=subject), default_from=DEFAULT_FROM)
    lines = [line for line in header_lines(rendered.data) if line]
    assert max(len(line) for line in lines) <= 78
    assert parse(rendered)["Subject"] == subject


def test_subject_with_an_unbreakable_word_is_still_folded() -> None:
    subject = "start " + "x" * 2000 + " end"
    rendered = render_message(make(subject=subject), default_from=DEFAULT_FROM)
    assert max(len(line) for line in header_lines(rendered.data)) <= 78
    assert parse(rendered)["Subject"] == subject
    assert_wire_format(rendered.data)


@pytest.mark.parametrize("length", [76, 77, 78, 79, 120])
def test_words_around_the_fold_limit_keep_header_lines_within_78(length: int) -> None:
    """The fast path hands over to the modern policy exactly where compat32 would
    write a line of text over 78 characters; long addresses alone do not."""
    word = "w" * length
    # An address that is one word of `length` characters too (labels are <= 63).
    labels = "d" * (length - len("someone@") - len(".example.com"))
    domain = ".".join(labels[i : i + 60] for i in range(0, len(labels), 60)) + ".example.com"
    domain = domain.replace("..", ".")
    rendered = render_message(
        make(subject=word, headers={"X-Token": word}, to=[f"someone@{domain}"]),
        default_from=f"sender@{domain}",
    )
    assert_wire_format(rendered.data)
    lines = header_lines(rendered.data)
    # Text is folded within 78 columns; an address or Message-ID is one token that no
    # folding can split, so only the 998 limit applies to its line.
    unbreakable = (b"From:", b"To:", b"Message-ID:", b" sender@", b" someone@", b" <")
    assert max(len(line) for line in lines if not line.startswith(unbreakable)) <= 78
    msg = parse(rendered)
    # A word too long for the first line starts on the next one ("Subject:" CRLF SP
    # word): the parser keeps that folding space, mail readers strip it.
    assert msg["Subject"].strip() == word
    assert msg["X-Token"].strip() == word
    assert msg["Message-ID"] == rendered.message_id


def test_long_display_names_fold_and_survive_a_round_trip() -> None:
    name = "Jörg" + "x" * 90
    rendered = render_message(
        make(to=[f"{name} <j@example.com>"], cc=["Ana <a@example.com>"], reply_to="r@example.com"),
        default_from=DEFAULT_FROM,
    )
    assert rendered.data.isascii()
    assert max(len(line) for line in header_lines(rendered.data)) <= 78
    # RFC 2047 6.2: adjacent encoded-words join without the space between them; the
    # modern parser's address headers get that wrong, the classic decoder gets it right.
    raw_to = email.message_from_bytes(rendered.data)["To"]
    assert str(make_header(decode_header(raw_to))) == f"{name} <j@example.com>"
    msg = parse(rendered)
    assert msg["Cc"] == "Ana <a@example.com>"
    assert msg["Reply-To"] == "r@example.com"


def test_many_recipients_fold_at_commas() -> None:
    to = [f"Person Number {i} <person{i}@example.com>" for i in range(40)]
    rendered = render_message(make(to=to), default_from=DEFAULT_FROM)
    assert max(len(line) for line in header_lines(rendered.data)) <= 78
    assert len(parse(rendered)["To"].addresses) == 40


def test_non_ascii_subject_is_encoded_and_decodes_back() -> None:
    subject = "Ihre Bestellung ist unterwegs, schöne Grüße " * 3
    rendered = render_message(make(subject=subject), default_from=DEFAULT_FROM)
    assert rendered.data.isascii()
    assert parse(rendered)["Subject"] == subject


def test_extra_headers_are_written() -> None:
    rendered = render_message(
        make(headers={"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"}),
        default_from=DEFAULT_FROM,
    )
    msg = parse(rendered)
    assert msg["X-Campaign"] == "spring"
    assert msg["List-Unsubscribe"] == "<mailto:u@example.com>"


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nBcc: victim@example.com"},
        {"subject": "Hi\rthere"},
        {"subject": "nul\x00byte"},
        {"subject": "line\u2028separator"},
        {"to": ["a@example.com\nBcc: victim@example.com"]},
        {"to": ["Eve\r\nBcc: v@example.com <e@example.com>"]},
        {"cc": ["c@example.com\r\n"]},
        {"from": "x@example.com\r\nBcc: v@example.com"},
        {"reply_to": "r@example.com\nX: y"},
        {"headers": {"X-Tag": "value\r\nBcc: victim@example.com"}},
        {"headers": {"X-Tag\r\nBcc": "v@example.com"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X:Colon": "x"}},
        {"headers": {"Bcc": "victim@example.com"}},
        {"headers": {"From": "ceo@example.com"}},
        {"headers": {"Content-Type": "text/html"}},
        {"headers": {"Message-ID": "<x@y>"}},
        {"headers": {"X-Dup": "1", "x-dup": "2"}},
        {"to": ["a@example.com, b@example.com"]},
        {"to": ["alice@example.org)<bob@example.org>"]},
        {"to": ["not an address"]},
        {"to": []},
    ],
)
def test_unsafe_input_is_refused_with_valueerror(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        render_message(unchecked(**fields), default_from=DEFAULT_FROM)


def test_bad_default_sender_is_refused() -> None:
    with pytest.raises(ValueError, match="from"):
        render_message(make(), default_from="nobody")


# Text that becomes headers: anything printable, incl. non-ASCII, no controls.
header_text = st.text(
    st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=0, max_size=300
)

# Bodies may hold anything that UTF-8 can encode.
body_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=3000)


@settings(max_examples=60, deadline=None)
@given(subject=header_text, body=body_text)
def test_any_subject_and_body_round_trip_on_the_wire(subject: str, body: str) -> None:
    """Hypothesis: whatever the text, the message is 7bit-clean CRLF with legal line
    lengths and decodes back to the same subject and body (line endings normalised)."""
    rendered = render_message(make(subject=subject, body=body), default_from=DEFAULT_FROM)
    assert_wire_format(rendered.data)
    assert rendered.data.isascii()
    assert max(len(line) for line in header_lines(rendered.data)) <= 78
    msg = parse(rendered)
    assert msg["Subject"] == subject.strip() or str(msg["Subject"]).strip() == " ".join(
        subject.split()
    )
    assert content(msg).splitlines() == body.splitlines()


@settings(max_examples=60, deadline=None)
@given(
    prefix=header_text,
    control=st.characters(whitelist_categories=["Cc", "Zl", "Zp"]),
    suffix=header_text,
)
def test_any_control_character_in_a_header_is_refused(
    prefix: str, control: str, suffix: str
) -> None:
    """Hypothesis: a control or line-break character anywhere in the subject or an
    extra header value raises ValueError instead of reaching the wire."""
    value = prefix + control + suffix
    with pytest.raises(ValueError, match="control character"):
        render_message(unchecked(subject=value), default_from=DEFAULT_FROM)
    with pytest.raises(ValueError, match="control character"):
        render_message(unchecked(headers={"X-Test": value}), default_from=DEFAULT_FROM)
