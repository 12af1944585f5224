"""service.mailer.encode: the fast path, the same message as the compat32 path, built directly.

The fast path (`render_fast`) writes the headers byte for byte as compat32 folds them
and encodes the bodies with binascii; these tests hold it to the compat32 path's
output (`render_compat32`) for generated headers and bodies, and check which requests
take it.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import uuid
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.mailer import encode, render_message
from service.models import SendRequest

pytestmark = pytest.mark.unit

_BOUNDARY = re.compile(rb'boundary="(=_[0-9a-f]{32})"')


def parse(data: bytes) -> EmailMessage:
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def texts(msg: EmailMessage) -> list[tuple[str, str]]:
    """(content type, decoded text with LF line ends) of every leaf part, in order."""
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        text = part.get_content()
        assert isinstance(text, str)
        out.append((part.get_content_type(), text.replace("\r\n", "\n")))
    return out


def assert_wire_format(data: bytes) -> None:
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", data) is None, "bare CR or LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.isascii()


def without_boundary(data: bytes) -> bytes:
    match = _BOUNDARY.search(data)
    return data if match is None else data.replace(match.group(1), b"=_BOUNDARY")


# Header text as render_message accepts it: no controls, no line separators, no
# surrogates (service.models refuses them), ASCII-heavy with some non-ASCII.
header_chars = st.characters(
    blacklist_categories=["Cc", "Cs", "Zl", "Zp"], max_codepoint=0x3000
) | st.sampled_from(" abcXYZ019.,;:<>\"'()=?_-")
header_text = st.one_of(
    st.text(header_chars, max_size=120),
    # Words that put the line near compat32's 78-column fold.
    st.lists(st.text("aZ.", min_size=1, max_size=14), min_size=4, max_size=9).map(" ".join),
)
# Bodies: anything the fast path takes (no CR, no splitlines controls), with long lines,
# leading dots, "From ", trailing spaces, non-ASCII in various amounts.
body_chars = st.characters(
    blacklist_categories=["Cs"], blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e"
)
body_text = st.one_of(
    st.text(body_chars, max_size=300),
    st.text(st.sampled_from("ab .\n\t="), max_size=300),
    st.builds(lambda n, s: "x" * n + s, st.integers(990, 1100), st.text(body_chars, max_size=5)),
    st.text(st.sampled_from("日本語\n "), max_size=200),
)
display_name = st.one_of(st.just(""), header_text)


@settings(max_examples=300, deadline=None)
@given(
    from_name=display_name,
    to_names=st.lists(display_name, min_size=1, max_size=4),
    subject=header_text,
    extra=st.dictionaries(
        st.sampled_from(["X-Tag", "X-Campaign-Identifier", "List-Unsubscribe", "X-A"]),
        header_text,
        max_size=3,
    ),
    body=st.none() | body_text,
    html=st.none() | body_text,
)
@example(from_name="", to_names=[""], subject="", extra={}, body="From here\n.\n", html=None)
@example(from_name="", to_names=[""], subject=" lead", extra={}, body=None, html="é" * 80)
@example(from_name="", to_names=[""], subject="a " * 34 + "b", extra={}, body="", html=None)
@example(from_name="", to_names=[""], subject="a " * 35, extra={}, body="", html=None)
def test_fast_path_matches_the_compat32_path(
    from_name: str,
    to_names: list[str],
    subject: str,
    extra: dict[str, str],
    body: str | None,
    html: str | None,
) -> None:
    """Same header bytes, and the same decoded text and html, as the compat32 path."""
    if body is None and html is None:
        body = ""
    headers = [
        ("Date", "Mon, 06 May 2024 07:08:09 +0000"),
        ("From", formataddr((from_name, "shop@example.com"))),
        ("To", ", ".join(formataddr((n, f"u{i}@example.org")) for i, n in enumerate(to_names))),
        ("Subject", subject),
        ("Message-ID", "<0123456789abcdef0123456789abcdef@example.com>"),
        *extra.items(),
    ]
    # Only what render_message would give the compat32 path at all.
    if not all(encode.compat32_folds(n, v) for n, v in headers if n not in ("From", "To")):
        return
    if not all(encode.compat32_folds("Reply-To", n) for n in (from_name, *to_names)):
        return
    assert encode.fast_body_ok(body)
    assert encode.fast_body_ok(html)

    fast = encode.render_fast(headers, body, html)
    slow = encode.render_compat32(headers, body, html)

    assert_wire_format(fast)
    fast_head, _, _ = without_boundary(fast).partition(b"\r\n\r\n")
    slow_head, _, _ = without_boundary(slow).partition(b"\r\n\r\n")
    assert fast_head == slow_head
    fast_msg, slow_msg = parse(fast), parse(slow)
    assert fast_msg.get_content_type() == slow_msg.get_content_type()
    assert fast_msg["From"].addresses == slow_msg["From"].addresses
    assert fast_msg["To"].addresses == slow_msg["To"].addresses
    assert fast_msg["Subject"] == slow_msg["Subject"]
    assert texts(fast_msg) == texts(slow_msg)
    assert [p["Content-Transfer-Encoding"] for p in fast_msg.walk()] == [
        p["Content-Transfer-Encoding"] for p in slow_msg.walk()
    ]


def make(**fields: Any) -> SendRequest:
    data: dict[str, Any] = {"to": ["ana@example.com"], "subject": "Hi", "body": "Hello\n"}
    data.update(fields)
    return SendRequest.model_validate(data)


def test_common_messages_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain text message, text+html, and non-ASCII text never build a Message."""

    def refuse(*args: object) -> bytes:
        raise AssertionError("took the compat32 path")

    monkeypatch.setattr(encode, "render_compat32", refuse)
    for request in (
        make(),
        make(html="<p>Hi</p>"),
        make(subject="Grüße", body="Schöne Grüße\n", to=["Jöhn <j@example.com>"]),
    ):
        rendered = render_message(request, default_from="noreply@localhost")
        assert parse(rendered.data)["Subject"] == request.subject


def test_a_body_with_carriage_returns_takes_the_compat32_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CR (lone or in CRLF) is left to the generator, which turns every one into CRLF."""
    calls = []
    real = encode.render_compat32

    def spy(*args: Any) -> bytes:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(encode, "render_compat32", spy)
    rendered = render_message(make(body="a\r\nb\rc\n"), default_from="noreply@localhost")
    assert len(calls) == 1
    assert rendered.data.endswith(b"\r\n\r\na\r\nb\r\nc\r\n")


def test_multipart_boundary_never_occurs_in_a_7bit_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """A boundary found in a part's text is drawn again."""
    taken = uuid.UUID(int=1)
    fresh = uuid.UUID(int=2)
    draws = iter([taken, fresh])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    body = f"see --=_{taken.hex} here\n"
    data = encode.render_fast([("Subject", "x")], body, "<p>x</p>")
    assert f'boundary="=_{fresh.hex}"'.encode() in data
    assert texts(parse(data)) == [("text/plain", body), ("text/html", "<p>x</p>")]
