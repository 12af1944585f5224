"""What capture keeps for Mailpit's shapes: part ids, sorting, body, snippet, search text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakesmtp.capture import Address, CapturedMessage, html_to_text, search_form

pytestmark = pytest.mark.unit


def captured(raw: bytes, rcpt_tos: list[str] | None = None) -> CapturedMessage:
    return CapturedMessage(
        "1", "sender@example.com", rcpt_tos or ["rcpt@example.com"], raw, tls=False, auth_user=None
    )


def multipart(subtype: str, boundary: str, *parts: bytes) -> bytes:
    head = b"Content-Type: multipart/%s; boundary=%s\r\n\r\n" % (
        subtype.encode(),
        boundary.encode(),
    )
    body = b"".join(b"--%s\r\n%s\r\n" % (boundary.encode(), p) for p in parts)
    return head + body + b"--%s--\r\n" % boundary.encode()


def attached(name: str, ctype: str = "application/octet-stream") -> bytes:
    return b'Content-Type: %s\r\nContent-Disposition: attachment; filename="%s"\r\n\r\nx' % (
        ctype.encode(),
        name.encode(),
    )


def test_parts_are_numbered_as_enmime_numbers_them() -> None:
    """Children take their parent's id plus .N; a multipart part then gains .0."""
    raw = b"Subject: deep\r\n" + multipart(
        "mixed",
        "a",
        b"Content-Type: text/plain\r\n\r\nbody",
        multipart(
            "mixed",
            "b",
            attached("b1"),
            multipart("mixed", "c", attached("c1"), attached("c2")),
        ),
        attached("a3"),
    )
    message = captured(raw)
    # Breadth first, as enmime collects them.
    assert [(p.part_id, p.filename) for p in message.attachment_parts] == [
        ("3", "a3"),
        ("2.1", "b1"),
        ("2.2.1", "c1"),
        ("2.2.2", "c2"),
    ]
    assert set(message.part_contents()) == {"0", "1", "2.0", "2.1", "2.2.0", "2.2.1", "2.2.2", "3"}
    assert message.part_contents({"2.2.2"}) == {"2.2.2": b"x"}


def test_alternative_takes_the_first_text_breadth_first() -> None:
    raw = b"Subject: alt\r\n" + multipart(
        "alternative",
        "a",
        multipart("mixed", "n", b"Content-Type: text/plain\r\n\r\nnested text"),
        b"Content-Type: text/plain\r\n\r\ntop text",
        b"Content-Type: text/html\r\n\r\n<p>html</p>",
    )
    message = captured(raw)
    assert message.body_text == "top text"
    assert message.body_html == "<p>html</p>"
    assert message.text == "nested text"  # our own API's view is unchanged: the first found


def test_parts_are_sorted_into_attachments_inlines_and_others() -> None:
    raw = b"Subject: sorts\r\n" + multipart(
        "mixed",
        "a",
        b"Content-Type: text/plain\r\nContent-Disposition: inline\r\n\r\nbody",
        b"Content-Type: application/octet-stream\r\n\r\nunmarked binary",
        b"Content-Type: image/png\r\nContent-ID: <img1>\r\n\r\npng",
        b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnotes",
    )
    message = captured(raw)
    assert [p.part_id for p in message.attachment_parts] == ["2", "4"]
    assert [p.part_id for p in message.inline_parts] == ["1"]
    assert [(p.part_id, p.content_id) for p in message.other_parts] == [("3", "img1")]
    assert message.body_text == "body"  # an attached text is not the body


def test_addresses_have_names_and_the_envelope_fills_bcc() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.com>\r\n"
        b'To: "Doe, Jane" <jane@example.com>, undisclosed-recipients:;\r\n'
        b"Bcc: secret@example.com\r\n\r\nx"
    )
    addresses = captured(raw, ["JANE@example.com", "other@example.com"]).addresses
    assert addresses.from_ == Address("Jörg", "jorg@example.com")
    assert addresses.to == (Address("Doe, Jane", "jane@example.com"),)
    assert addresses.bcc == (Address("", "secret@example.com"), Address("", "other@example.com"))


def test_snippet_is_200_bytes_of_text_never_half_a_character() -> None:
    body = ("é" * 150).encode()  # 300 bytes
    message = captured(b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body)
    assert message.snippet == "é" * 100 + "..."
    spaced = captured(b"Subject: s\r\n\r\n  two\r\n\r\n  lines\t here  \r\n")
    assert spaced.snippet == "two lines here"


def test_html_to_text_leaves_out_head_script_and_style() -> None:
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body>"
        "<script>alert(1)</script><div>one</div><div>two</div>three<br>four "
        '<a href="https://example.com/x">link</a> <a href="mailto:a@b">mail</a> '
        "&amp;\u00a0end</body></html>"
    )
    assert html_to_text(html) == "one two three four link mail & end"
    assert html_to_text(html, links=True) == (
        "one two three four link https://example.com/x mail & end"
    )


def test_search_text_holds_headers_body_names_and_recipients() -> None:
    raw = b"Subject: Hello (World)\r\nFrom: A <a@example.com>\r\n" + multipart(
        "mixed", "a", b"Content-Type: text/plain\r\n\r\nThe BODY", attached("Report.PDF")
    )
    text = captured(raw, ["envelope@example.com"]).search_text
    for word in ("hello world", "a@example.com", "the body", "report.pdf", "envelope@example"):
        assert word in text


@given(st.text())
def test_search_form_is_lower_case_single_spaced_without_separators(text: str) -> None:
    form = search_form(text)
    assert form == form.lower()
    assert not set(form) & set('<>",;()\n\t')
    assert "  " not in form
    assert form == form.strip()
    assert search_form(form) == form
