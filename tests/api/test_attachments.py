"""Attachments through the API into a real fakesmtp: the parts a mail client sees,
inline images under the HTML, RFC 2231 names, the record's list, and every refusal
as a 422 naming the item (nothing stored or sent)."""

from __future__ import annotations

import base64
import email
import email.policy
import mimetypes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakesmtp import FakeSMTPServer
from service.models import SendRequest
from tests.api.helpers import AUTH, MakeClient, MakeSettings, stored_rows, wait_status

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"\x00\xff" * 3000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Two files and an inline image, the HTML showing the image.
INVOICE: dict[str, Any] = {
    "to": "ana@example.com",
    "subject": "Invoice",
    "body": "Your invoice is attached.",
    "html": '<p>Your invoice.</p><img src="cid:logo">',
    "attachments": [
        {"filename": "invoice.pdf", "content": b64(PDF)},
        {"filename": "Grüße résumé.csv", "content": b64(b"a,b\r\n1,2\r\n")},
        {"filename": "logo.png", "content": b64(PNG), "content_id": "logo"},
    ],
}


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_two_attachments_and_an_inline_image_open_with_the_right_parts(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    made = client.post("/send_async", json=INVOICE, headers=AUTH)
    assert made.status_code == 202, made.text
    record = wait_status(client, made.json()["id"], "sent")
    assert record["attachments"] == [
        {
            "filename": "invoice.pdf",
            "content_type": "application/pdf",
            "size": len(PDF),
            "content_id": None,
        },
        {
            "filename": "Grüße résumé.csv",
            "content_type": "text/csv",
            "size": 10,
            "content_id": None,
        },
        {
            "filename": "logo.png",
            "content_type": "image/png",
            "size": len(PNG),
            "content_id": "logo",
        },
    ]

    [captured] = relay.messages()
    message = parsed(captured.raw)
    assert message.get_content_type() == "multipart/mixed"
    assert message.get_body(("plain",)).get_content().strip() == "Your invoice is attached."  # type: ignore[union-attr]
    html = message.get_body(("html",))
    assert html is not None
    assert 'src="cid:logo"' in html.get_content()
    # The inline image sits beside the HTML in a multipart/related.
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    inline = [p for p in related.iter_parts() if p.get_content_type() == "image/png"]
    assert [p["Content-ID"] for p in inline] == ["<logo>"]
    assert inline[0].get_content_disposition() == "inline"
    assert inline[0].get_content() == PNG
    files = {p.get_filename(): p for p in message.iter_attachments()}
    assert set(files) == {"invoice.pdf", "Grüße résumé.csv"}
    assert files["invoice.pdf"].get_content() == PDF
    assert files["Grüße résumé.csv"].get_content_type() == "text/csv"
    assert b"filename*=utf-8''Gr%C3%BC%C3%9Fe%20r%C3%A9sum%C3%A9.csv" in captured.raw
    assert max(len(line) for line in captured.raw.split(b"\r\n")) <= 998


def test_content_type_given_wins_over_the_guess_and_unknown_is_octet_stream(
    client: TestClient, relay: FakeSMTPServer
) -> None:
    request = {
        "to": "ana@example.com",
        "body": "x",
        "attachments": [
            {"filename": "data.bin.weird", "content": b64(b"1")},
            {"filename": "report", "content": b64(b"2"), "content_type": "Text/Plain"},
        ],
    }
    made = client.post("/send", json=request, headers=AUTH)
    assert made.status_code == 200, made.text
    types = [p.get_content_type() for p in parsed(relay.messages()[0].raw).iter_attachments()]
    assert types == ["application/octet-stream", "text/plain"]


def test_the_built_message_with_attachments_is_held_to_max_message_bytes(
    make_client: MakeClient, make_settings: MakeSettings, db_path: Path
) -> None:
    """3,000 bytes decoded are 4,000 and more encoded: over a 3,500-byte limit, 413."""
    client = make_client(make_settings(max_message_bytes=3500))
    request = {
        "to": "ana@example.com",
        "body": "x",
        "attachments": [{"filename": "a.bin", "content": b64(b"\x00" * 2400)}],
    }
    response = client.post("/send_async", json=request, headers=AUTH)
    assert response.status_code == 413, response.text
    assert "MAX_MESSAGE_BYTES" in response.json()["detail"]
    assert stored_rows(db_path) == []


@pytest.mark.parametrize(
    ("attachment", "loc", "words"),
    [
        ({"filename": "a.pdf", "content": "not base64!"}, ["content"], "base64"),
        ({"filename": "a.pdf", "content": "YQ"}, ["content"], "base64"),  # padding missing
        ({"filename": "a\r\nBcc: x@evil.example", "content": "YQ=="}, ["filename"], "control"),
        ({"filename": "", "content": "YQ=="}, ["filename"], "at least 1"),
        (
            {"filename": "a.png", "content": "YQ==", "content_id": "lo go"},
            ["content_id"],
            "pattern",
        ),
        ({"filename": "a.png", "content": "YQ==", "content_id": "<x>"}, ["content_id"], "pattern"),
        ({"filename": "a", "content": "YQ==", "content_type": "pdf"}, ["content_type"], "MIME"),
        ({"filename": "a", "content": "YQ==", "extra": 1}, ["extra"], "not permitted"),
        ({"filename": "a"}, ["content"], "required"),
    ],
)
def test_a_bad_attachment_is_422_naming_its_index_and_nothing_is_stored(
    client: TestClient,
    relay: FakeSMTPServer,
    db_path: Path,
    attachment: dict[str, Any],
    loc: list[str],
    words: str,
) -> None:
    request = {
        "to": "ana@example.com",
        "body": "x",
        "html": "<p>x</p>",
        "attachments": [{"filename": "ok.txt", "content": "YQ=="}, attachment],
    }
    response = client.post("/send", json=request, headers=AUTH)
    assert response.status_code == 422, response.text
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "attachments", 1, *loc]
    assert words in item["msg"]
    assert stored_rows(db_path) == []
    assert relay.messages() == []


def test_inline_without_html_and_a_content_id_twice_are_422(client: TestClient) -> None:
    inline = {"filename": "a.png", "content": "YQ==", "content_id": "a"}
    without_html = {"to": "ana@example.com", "body": "x", "attachments": [inline]}
    response = client.post("/send_async", json=without_html, headers=AUTH)
    assert response.status_code == 422
    assert "give 'html'" in response.json()["detail"][0]["msg"]
    twice = {"to": "ana@example.com", "html": "<p/>", "attachments": [inline, inline]}
    response = client.post("/send_async", json=twice, headers=AUTH)
    assert response.status_code == 422
    assert "given twice" in response.json()["detail"][0]["msg"]


# -- properties ---------------------------------------------------------------------------

_names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(
        st.tuples(_names.filter(str.strip), st.binary(max_size=3000)), min_size=1, max_size=4
    ),
    inline=st.booleans(),
)
def test_any_valid_attachments_build_a_message_that_parses_back_to_them(
    files: list[tuple[str, bytes]], inline: bool
) -> None:
    """Whatever the names and bytes, the built message carries each file whole, under
    its name, and no line is over 998 octets."""
    from service import mailer

    attachments: list[dict[str, Any]] = [
        {"filename": name, "content": b64(data)} for name, data in files
    ]
    if inline:
        attachments[0]["content_id"] = "first"
    request = SendRequest.model_validate(
        {"to": "ana@example.com", "html": "<p>x</p>", "attachments": attachments}
    )
    rendered = mailer.render_message(request, default_from="app@example.com")
    assert max(len(line) for line in rendered.data.split(b"\r\n")) <= 998
    message = parsed(rendered.data)
    found = [
        # The bytes as sent, whatever type the name suggests (text/plain for "x.c").
        (p.get_filename(), p.get_payload(decode=True))
        for p in message.walk()
        if p.get_content_disposition() in ("attachment", "inline")
    ]
    assert sorted(found, key=repr) == sorted([(n.strip(), d) for n, d in files], key=repr)


def test_a_files_type_is_guessed_from_pythons_table_not_the_hosts() -> None:
    """The same name gets the same type on every machine: a type the host's
    /etc/mime.types knows (here added to mimetypes' global table) is not used."""
    from service import mailer

    mimetypes.add_type("chemical/x-example", ".example-ext", strict=False)
    assert mimetypes.guess_type("a.example-ext", strict=False)[0] == "chemical/x-example"
    files = [{"filename": n, "content": b64(b"x")} for n in ("a.example-ext", "b.pdf", "c.c")]
    request = SendRequest.model_validate(
        {"to": "ana@example.com", "body": "x", "attachments": files}
    )
    assert [part.content_type for part in mailer.file_parts(request)] == [
        "application/octet-stream",
        "application/pdf",
        "text/plain",
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_content_that_is_not_strict_base64_is_refused(text: str) -> None:
    strict = True
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        strict = False
    request = {
        "to": "a@example.com",
        "body": "x",
        "attachments": [{"filename": "f", "content": text}],
    }
    try:
        SendRequest.model_validate(request)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == strict


def test_validation_takes_the_base64_text_out_of_the_parsed_request() -> None:
    """FastAPI keeps the parsed JSON for the whole request: the text (a third larger than
    the file) must not stay there beside the decoded file and the built message."""
    parsed_json: dict[str, Any] = {
        "to": "ana@example.com",
        "body": "x",
        "attachments": [{"filename": "a.bin", "content": b64(b"abc")}],
    }
    request = SendRequest.model_validate(parsed_json)
    assert request.attachments[0].content == b"abc"
    assert parsed_json["attachments"][0] == {"filename": "a.bin"}
