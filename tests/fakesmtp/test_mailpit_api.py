"""Mailpit's API v1 on fakesmtp's HTTP port, route by route, over real sockets.

The expected shapes, ids and answers are Mailpit's (server/apiv1, internal/storage,
and enmime's part numbering), read from its source.
"""

from __future__ import annotations

import base64
import hashlib
import smtplib
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakesmtp import FakeSMTPServer

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
PDF = b"%PDF-1.4\n" + b"x" * 300 + b"\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode()


# multipart/mixed [ related [ alternative [ text, html ], inline png ], attached pdf ]:
# enmime numbers them 1.0 [ 1.1.0 [ 1.1.1, 1.1.2 ], 1.2 ], 2.
RICH = f"""\
From: "Alice Example" <alice@example.com>
To: Bob <bob@example.org>, carol@example.org
Cc: Dan <dan@example.net>
Reply-To: replies@example.com
Subject: Quarterly report
Message-ID: <report-1@example.com>
Date: Tue, 02 Jan 2024 10:20:30 +0100
List-Unsubscribe: <mailto:unsub@example.com>, <https://example.com/unsub>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/related; boundary="related"

--related
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8

Hello Bob, the figures are attached.
--alt
Content-Type: text/html; charset=utf-8

<html><head><title>ignored</title></head><body><p>Hello <b>Bob</b>,</p>\
<img src="cid:logo@example.com"><p>the <a href="https://example.com/r">numbers</a> \
are attached.</p></body></html>
--alt--
--related
Content-Type: image/png
Content-Transfer-Encoding: base64
Content-Disposition: inline; filename="logo.png"
Content-ID: <logo@example.com>

{b64(PNG)}
--related--
--outer
Content-Type: application/pdf; name="q1 report.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="q1 report.pdf"

{b64(PDF)}
--outer--
""".replace("\n", "\r\n").encode()


def plain(subject: str, *, body: str = "plain body", to: str = "rcpt@example.com") -> bytes:
    return (
        f"From: Sender <sender@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.com>\r\n\r\n{body}\r\n"
    ).encode()


def send(server: FakeSMTPServer, *messages: bytes, rcpts: list[str] | None = None) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        for raw in messages:
            client.sendmail("sender@example.com", rcpts or ["rcpt@example.com"], raw)


def ids(http: httpx.Client, query: str, **params: str | int) -> list[str]:
    response = http.get("/api/v1/search", params={"query": query, **params})
    assert response.status_code == 200, response.text
    return [m["ID"] for m in response.json()["messages"]]


# GET /api/v1/messages ------------------------------------------------------------------


def test_list_is_mailpits_messages_summary_newest_first(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    before = datetime.now(UTC)
    send(server, RICH, plain("second"), rcpts=["bob@example.org", "hidden@example.org"])
    body = http.get("/api/v1/messages").json()
    assert list(body) == [
        "total", "unread", "count", "messages_count", "messages_unread", "start", "tags",
        "messages",
    ]  # fmt: skip
    assert (body["total"], body["unread"], body["count"], body["messages_count"]) == (2, 2, 2, 2)
    assert (body["messages_unread"], body["start"], body["tags"]) == (2, 0, [])
    newest, rich = body["messages"]
    assert (newest["Subject"], rich["Subject"]) == ("second", "Quarterly report")
    assert rich == {
        "ID": server.messages()[1].id,
        "MessageID": "report-1@example.com",
        "Read": False,
        "From": {"Name": "Alice Example", "Address": "alice@example.com"},
        "To": [
            {"Name": "Bob", "Address": "bob@example.org"},
            {"Name": "", "Address": "carol@example.org"},
        ],
        "Cc": [{"Name": "Dan", "Address": "dan@example.net"}],
        # As Mailpit: envelope recipients that no header names are shown as Bcc.
        "Bcc": [{"Name": "", "Address": "hidden@example.org"}],
        "ReplyTo": [{"Name": "", "Address": "replies@example.com"}],
        "Subject": "Quarterly report",
        "Created": rich["Created"],
        "Username": "",
        "Tags": [],
        "Size": len(RICH),
        "Attachments": 1,
        "Snippet": "Hello Bob, the numbers are attached.",
    }
    created = datetime.fromisoformat(rich["Created"])
    assert rich["Created"].endswith("Z")
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    assert created.microsecond % 1000 == 0  # milliseconds, as Mailpit stores them


def test_list_pages_with_start_and_limit(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, plain("one"), plain("two"), plain("three"))

    def subjects(**params: str | int) -> list[str]:
        body = http.get("/api/v1/messages", params=params).json()
        assert body["total"] == body["messages_count"] == 3
        assert body["count"] == len(body["messages"])
        return [m["Subject"] for m in body["messages"]]

    assert subjects(start=1, limit=1) == ["two"]
    assert subjects(start=2) == ["one"]
    assert subjects(start=5) == []
    # As Mailpit: a limit of 0 is every message, and then the start is not used.
    assert subjects(limit=0, start=1) == ["three", "two", "one"]


@pytest.mark.parametrize(
    "params", [{"start": "-1"}, {"start": "x"}, {"limit": "-5"}, {"limit": "1.5"}, {"start": ""}]
)
def test_list_reads_a_bad_start_or_limit_as_mailpit_does_as_the_default(
    server: FakeSMTPServer, http: httpx.Client, params: dict[str, str]
) -> None:
    send(server, plain("one"), plain("two"))
    response = http.get("/api/v1/messages", params=params)
    assert response.status_code == 200
    assert response.json()["start"] == 0
    assert [m["Subject"] for m in response.json()["messages"]] == ["two", "one"]


def test_limit_defaults_to_fifty(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, *(plain(f"n{i}") for i in range(52)))
    body = http.get("/api/v1/messages").json()
    assert (body["total"], body["count"], len(body["messages"])) == (52, 50, 50)


def test_list_of_an_empty_store(http: httpx.Client) -> None:
    body = http.get("/api/v1/messages").json()
    assert (body["total"], body["count"], body["messages"], body["tags"]) == (0, 0, [], [])


# GET /api/v1/message/{ID} -----------------------------------------------------------------


def test_message_has_mailpits_message_shape(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, RICH, rcpts=["bob@example.org"])
    message_id = server.messages()[0].id
    body = http.get(f"/api/v1/message/{message_id}").json()
    html = body.pop("HTML")
    inline, attachments = body.pop("Inline"), body.pop("Attachments")
    assert body == {
        "ID": message_id,
        "MessageID": "report-1@example.com",
        "Read": True,
        "From": {"Name": "Alice Example", "Address": "alice@example.com"},
        "To": [
            {"Name": "Bob", "Address": "bob@example.org"},
            {"Name": "", "Address": "carol@example.org"},
        ],
        "Cc": [{"Name": "Dan", "Address": "dan@example.net"}],
        "Bcc": [],
        "ReplyTo": [{"Name": "", "Address": "replies@example.com"}],
        "ReturnPath": "alice@example.com",
        "Subject": "Quarterly report",
        "ListUnsubscribe": {
            "Header": "<mailto:unsub@example.com>, <https://example.com/unsub>",
            "Links": ["mailto:unsub@example.com", "https://example.com/unsub"],
            "Errors": "",
            "HeaderPost": "List-Unsubscribe=One-Click",
        },
        "Date": "2024-01-02T10:20:30+01:00",
        "Tags": [],
        "Username": "",
        "Text": "Hello Bob, the figures are attached.",
        "Size": len(RICH),
    }
    assert html.startswith("<html><head><title>ignored</title>")
    assert inline == [
        {
            "PartID": "1.2",
            "FileName": "logo.png",
            "ContentType": "image/png",
            "ContentID": "logo@example.com",
            "Size": len(PNG),
            "Checksums": {
                "MD5": hashlib.md5(PNG, usedforsecurity=False).hexdigest(),
                "SHA1": hashlib.sha1(PNG, usedforsecurity=False).hexdigest(),
                "SHA256": hashlib.sha256(PNG).hexdigest(),
            },
        }
    ]
    assert attachments == [
        {
            "PartID": "2",
            "FileName": "q1 report.pdf",
            "ContentType": "application/pdf",
            "ContentID": "",
            "Size": len(PDF),
            "Checksums": {
                "MD5": hashlib.md5(PDF, usedforsecurity=False).hexdigest(),
                "SHA1": hashlib.sha1(PDF, usedforsecurity=False).hexdigest(),
                "SHA256": hashlib.sha256(PDF).hexdigest(),
            },
        }
    ]


def test_reading_a_message_marks_it_read(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, plain("one"), plain("two"))
    older = server.messages()[1].id
    assert http.get(f"/api/v1/message/{older}").status_code == 200
    body = http.get("/api/v1/messages").json()
    assert body["unread"] == 1
    assert [(m["Subject"], m["Read"]) for m in body["messages"]] == [("two", False), ("one", True)]


def test_latest_is_the_newest_message_or_the_newest_match(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, plain("alpha"), plain("beta"), plain("gamma"))
    assert http.get("/api/v1/message/latest").json()["Subject"] == "gamma"
    latest = http.get("/api/v1/message/latest", params={"query": "subject:beta"})
    assert latest.json()["Subject"] == "beta"
    raw = http.get("/api/v1/message/latest/raw", params={"query": "subject:alpha"})
    assert b"Subject: alpha" in raw.content


@pytest.mark.parametrize("route", ["", "/headers", "/raw", "/part/1"])
def test_latest_on_an_empty_store_is_mailpits_404(http: httpx.Client, route: str) -> None:
    response = http.get(f"/api/v1/message/latest{route}")
    assert (response.status_code, response.text) == (404, "Message not found")


def test_latest_matching_nothing_is_404(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, plain("alpha"))
    response = http.get("/api/v1/message/latest", params={"query": "subject:nothing"})
    assert (response.status_code, response.text) == (404, "Message not found")


@pytest.mark.parametrize("route", ["", "/headers", "/raw", "/part/1"])
def test_unknown_id_is_mailpits_plain_404(
    server: FakeSMTPServer, http: httpx.Client, route: str
) -> None:
    send(server, plain("alpha"))
    response = http.get(f"/api/v1/message/no-such-id{route}")
    assert (response.status_code, response.text) == (404, "404 page not found")
    assert response.headers["content-type"] == "text/plain"


def test_message_without_date_from_or_message_id(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, b"Subject: bare\r\n\r\nno headers to speak of\r\n")
    message = server.messages()[0]
    body = http.get(f"/api/v1/message/{message.id}").json()
    assert body["From"] == {"Name": "", "Address": ""}
    assert (body["MessageID"], body["ReturnPath"], body["To"]) == ("", "", [])
    # As Mailpit: without a Date header, the time received.
    assert datetime.fromisoformat(body["Date"]) == message.received_at.replace(
        microsecond=message.received_at.microsecond // 1000 * 1000
    )
    assert body["Text"] == "no headers to speak of\r\n"
    assert (body["HTML"], body["Inline"], body["Attachments"]) == ("", [], [])


def test_a_from_that_cannot_be_read_is_a_name_without_address(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(
        server,
        b"From: The Bot\r\nTo: <<<@@@>>>, someone@example.com\r\n"
        b"Return-Path: <bounce@example.com>\r\nSubject: x\r\n\r\nx\r\n",
    )
    body = http.get("/api/v1/message/latest").json()
    assert body["From"] == {"Name": "The Bot", "Address": ""}
    assert body["To"] == []  # as Go's parser: one bad address and the list is unread
    assert body["ReturnPath"] == "bounce@example.com"


def test_html_only_message_gets_its_text_from_the_html(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    raw = (
        b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<style>p {color: red}</style><p>Caf&eacute; opens</p><p>at nine</p>\r\n"
    )
    send(server, raw)
    body = http.get("/api/v1/message/latest").json()
    assert body["HTML"].startswith("<style>")
    assert body["Text"] == "Café opens at nine"
    assert http.get("/api/v1/messages").json()["messages"][0]["Snippet"] == "Café opens at nine"


def test_mixed_message_text_is_every_text_part_joined_as_enmime_does(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    raw = (
        b"Subject: two texts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nsecond \xe9\r\n"
        b"--b--\r\n"
    )
    send(server, raw)
    assert http.get("/api/v1/message/latest").json()["Text"] == "first\n--\nsecond é"


def test_an_unmarked_image_with_a_content_id_is_listed_inline(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    raw = (
        b"Subject: related\r\nContent-Type: multipart/related; boundary=r\r\n\r\n"
        b'--r\r\nContent-Type: text/html\r\n\r\n<img src="cid:dot">\r\n'
        b"--r\r\nContent-Type: image/gif\r\nContent-ID: <dot>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nR0lGODlhAQABAAAAACw=\r\n"
        b"--r\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"R0lGODlh\r\n--r--\r\n"
    )
    send(server, raw)
    body = http.get("/api/v1/message/latest").json()
    # Part 3 has neither a name nor a content id: Mailpit does not list it.
    assert [(p["PartID"], p["FileName"], p["ContentID"]) for p in body["Inline"]] == [
        ("2", "dot", "dot")
    ]
    assert body["Attachments"] == []
    part = http.get(f"/api/v1/message/{body['ID']}/part/2")
    assert part.content == base64.b64decode("R0lGODlhAQABAAAAACw=")
    assert part.headers["content-disposition"] == 'inline; filename="dot"'


def test_a_message_that_is_all_attachment_is_part_0(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    raw = (
        b"Subject: just a pdf\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="only.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(PDF).encode().replace(b"\n", b"\r\n")
    )
    send(server, raw)
    body = http.get("/api/v1/message/latest").json()
    assert [(p["PartID"], p["FileName"], p["Size"]) for p in body["Attachments"]] == [
        ("0", "only.pdf", len(PDF))
    ]
    assert body["Text"] == ""
    assert http.get(f"/api/v1/message/{body['ID']}/part/0").content == PDF


# Parts, headers, raw --------------------------------------------------------------------


def test_part_is_the_decoded_content_with_mailpits_headers(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, RICH)
    message_id = server.messages()[0].id
    pdf = http.get(f"/api/v1/message/{message_id}/part/2")
    assert (pdf.status_code, pdf.content) == (200, PDF)
    assert pdf.headers["content-type"] == "application/pdf"
    # Mailpit path-escapes the name and always says inline.
    assert pdf.headers["content-disposition"] == 'inline; filename="q1%20report.pdf"'
    png = http.get(f"/api/v1/message/{message_id}/part/1.2")
    assert (png.content, png.headers["content-type"]) == (PNG, "image/png")


@pytest.mark.parametrize("part_id", ["1.1.1", "1.1.2", "1.0", "0", "3", "x"])
def test_body_parts_and_unknown_parts_are_404_as_in_mailpit(
    server: FakeSMTPServer, http: httpx.Client, part_id: str
) -> None:
    send(server, RICH)
    response = http.get(f"/api/v1/message/{server.messages()[0].id}/part/{part_id}")
    assert (response.status_code, response.text) == (404, "404 page not found")


def test_headers_are_raw_values_under_gos_canonical_keys_sorted(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    raw = (
        b"Received: from a by b\r\nreceived: from c\r\n by d\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMESSAGE-ID: <x@example.com>\r\n"
        b"x-custom-thing: 1\r\nX-MIXED_case: 2\r\n\r\nbody\r\n"
    )
    send(server, raw)
    response = http.get(f"/api/v1/message/{server.messages()[0].id}/headers")
    assert response.headers["content-type"] == "application/json"
    headers = response.json()
    assert headers == {
        "Message-Id": ["<x@example.com>"],
        "Received": ["from a by b", "from c by d"],
        "Subject": ["=?utf-8?q?caf=C3=A9?="],
        "X-Custom-Thing": ["1"],
        "X-Mixed_case": ["2"],
    }
    assert list(headers) == sorted(headers)


def test_raw_is_the_bytes_as_received(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, RICH)
    message = server.messages()[0]
    response = http.get(f"/api/v1/message/{message.id}/raw")
    assert (response.content, response.headers["content-type"]) == (
        message.raw,
        "text/plain; charset=utf-8",
    )
    assert "content-disposition" not in response.headers
    download = http.get(f"/api/v1/message/{message.id}/raw", params={"dl": "1"})
    assert download.headers["content-disposition"] == f'attachment; filename="{message.id}.eml"'


# Search ---------------------------------------------------------------------------------


@pytest.fixture
def searchable(server: FakeSMTPServer) -> dict[str, str]:
    """Three messages; their ids by name."""
    send(server, RICH, rcpts=["bob@example.org"])
    send(
        server,
        plain("Invoice 42", body="Please pay; total 10 EUR", to="Erin <erin@example.org>"),
        plain("Weekly news", body="Nothing new, the report is late", to="bob@example.org"),
    )
    rich, invoice, news = (m.id for m in reversed(server.messages()))
    return {"rich": rich, "invoice": invoice, "news": news}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("to:bob", ["news", "rich"]),
        ("to:Erin", ["invoice"]),  # the display name counts, and case does not
        ("-to:bob", ["invoice"]),
        ("!to:bob", ["invoice"]),
        ("from:alice@example.com", ["rich"]),
        ("cc:dan", ["rich"]),
        ("reply-to:replies", ["rich"]),
        ("addressed:erin", ["invoice"]),
        ("subject:invoice", ["invoice"]),
        ('subject:"weekly news"', ["news"]),
        ("-subject:invoice", ["news", "rich"]),
        ("message-id:report-1", ["rich"]),
        ("has:attachment", ["rich"]),
        ("-has:attachment", ["news", "invoice"]),
        ("has:inline", ["rich"]),
        ("report", ["news", "rich"]),  # the news body; the rich subject
        ('"the report is"', ["news"]),
        ("figures", []),  # with an HTML part, Mailpit searches the HTML's text, not the text
        ("example.com/r", ["rich"]),  # ... and the HTML's links
        ("q1 report.pdf", ["rich"]),  # two words: each is found
        ('"q1 report.pdf"', ["rich"]),  # the attachment's name
        ("pay total", ["invoice"]),
        ("pay -total", []),
        ("10 eur", ["invoice"]),
        ("tag:urgent", []),  # fakesmtp keeps no tags
        ("-tag:urgent", ["news", "invoice", "rich"]),
        ("larger:1k", ["rich"]),
        ("smaller:1k", ["news", "invoice"]),
        ("larger:0k", []),  # not a size to Mailpit: searched as text
        ("is:unread", ["news", "invoice", "rich"]),
        ("is:read", []),
        ('""', ["news", "invoice", "rich"]),  # nothing left to look for
    ],
)
def test_search_terms_mean_what_they_mean_in_mailpit(
    http: httpx.Client, searchable: dict[str, str], query: str, expected: list[str]
) -> None:
    assert ids(http, query) == [searchable[name] for name in expected]


def test_search_after_and_before_compare_the_time_received(
    http: httpx.Client, searchable: dict[str, str]
) -> None:
    everything = ["news", "invoice", "rich"]
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert ids(http, f"after:{yesterday}", tz="UTC") == [searchable[n] for n in everything]
    assert ids(http, f"before:{yesterday}", tz="UTC") == []
    assert ids(http, f"-before:{yesterday}", tz="UTC") == [searchable[n] for n in everything]
    assert ids(http, f"after:{tomorrow}") == []
    # A date Mailpit cannot read is left out of the search.
    assert ids(http, "after:someday") == [searchable[n] for n in everything]


def test_search_reports_counts_and_pages(
    server: FakeSMTPServer, http: httpx.Client, searchable: dict[str, str]
) -> None:
    http.get(f"/api/v1/message/{searchable['news']}")  # read
    body = http.get("/api/v1/search", params={"query": "to:bob", "limit": 1, "start": 1}).json()
    assert (body["total"], body["unread"], body["messages_count"]) == (3, 2, 2)
    assert (body["messages_unread"], body["count"], body["start"]) == (1, 1, 1)
    assert [m["ID"] for m in body["messages"]] == [searchable["rich"]]
    # Unlike the list, a search with limit 0 shows none (Mailpit's List and Search differ).
    empty = http.get("/api/v1/search", params={"query": "to:bob", "limit": 0}).json()
    assert (empty["messages"], empty["messages_count"]) == ([], 2)


@pytest.mark.parametrize("query", ["", "   "])
def test_search_without_a_query_is_mailpits_400(http: httpx.Client, query: str) -> None:
    for method in ("GET", "DELETE"):
        response = http.request(method, "/api/v1/search", params={"query": query})
        assert (response.status_code, response.text) == (400, "Error: no search query")
        assert response.headers["content-type"] == "text/plain"


def test_delete_by_search_deletes_the_matches_only(
    server: FakeSMTPServer, http: httpx.Client, searchable: dict[str, str]
) -> None:
    response = http.delete("/api/v1/search", params={"query": "to:bob"})
    assert (response.status_code, response.text) == (200, "ok")
    assert [m.id for m in server.messages()] == [searchable["invoice"]]


# DELETE and PUT /api/v1/messages -------------------------------------------------------


def test_delete_with_ids_deletes_those(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, plain("one"), plain("two"), plain("three"))
    three, two, one = (m.id for m in server.messages())
    response = http.request("DELETE", "/api/v1/messages", json={"IDs": [one, three, "unknown"]})
    assert (response.status_code, response.text) == (200, "ok")
    assert response.headers["content-type"] == "text/plain"
    assert [m.id for m in server.messages()] == [two]
    # Go's decoder matches field names in any case.
    http.request("DELETE", "/api/v1/messages", json={"ids": [two]})
    assert server.messages() == []


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"content": b""},
        {"json": {"IDs": []}},
        {"json": {"IDs": None}},
        {"json": None},
        {"json": {"IDs": "not a list"}},
        {"json": [1, 2]},
        {"data": {"ids": ["1"]}},  # a form, as mailpit-api-client sends: not JSON to Mailpit
    ],
    ids=["no body", "empty", "no ids", "null ids", "null", "bad ids", "array", "form"],
)
def test_delete_without_usable_ids_deletes_everything_as_mailpit_does(
    server: FakeSMTPServer, http: httpx.Client, request_body: dict[str, object]
) -> None:
    send(server, plain("one"), plain("two"))
    response = http.request("DELETE", "/api/v1/messages", **request_body)  # type: ignore[arg-type]
    assert (response.status_code, response.text) == (200, "ok")
    assert server.messages() == []


def test_put_sets_read_by_ids_by_search_or_all(server: FakeSMTPServer, http: httpx.Client) -> None:
    send(server, plain("one"), plain("two"), plain("three"))
    three, two, one = (m.id for m in server.messages())

    def read_ids() -> list[str]:
        return ids(http, "is:read")

    response = http.put("/api/v1/messages", json={"Read": True, "IDs": [one, "unknown"]})
    assert (response.status_code, response.text) == (200, "ok")
    assert read_ids() == [one]
    http.put("/api/v1/messages", json={"read": True, "search": "subject:three"})
    assert read_ids() == [three, one]
    http.put("/api/v1/messages", json={"Read": True})
    assert read_ids() == [three, two, one]
    http.put("/api/v1/messages", json={"IDs": [two]})  # Read left out: false
    assert read_ids() == [three, one]
    http.put("/api/v1/messages", json={})
    assert read_ids() == []
    assert http.get("/api/v1/messages").json()["unread"] == 3


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        ({"content": b""}, "EOF"),
        ({"data": {"ids": "1"}}, "invalid character 'i' looking for beginning of value"),
        ({"json": {"IDs": ["1"], "Search": "x"}}, "You may specify either IDs or a search"),
        ({"json": {"Read": "yes"}}, "cannot unmarshal"),
        ({"json": {"IDs": [1]}}, "cannot unmarshal"),
        ({"content": b"{broken"}, "invalid JSON"),
    ],
)
def test_put_refuses_what_mailpit_refuses_with_400(
    server: FakeSMTPServer, http: httpx.Client, request_body: dict[str, object], reason: str
) -> None:
    send(server, plain("one"))
    response = http.put("/api/v1/messages", **request_body)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert reason in response.text
    assert response.headers["content-type"] == "text/plain"
    assert ids(http, "is:read") == []


def test_our_own_api_is_unchanged_beside_mailpits(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, RICH)
    detail = http.get(f"/api/messages/{server.messages()[0].id}").json()
    assert set(detail) == {
        "id", "mail_from", "rcpt_tos", "subject", "message_id", "received_at", "size", "tls",
        "auth_user", "headers", "text", "html", "attachments", "raw",
    }  # fmt: skip
    assert detail["text"] == "Hello Bob, the figures are attached."
    assert detail["attachments"] == ["logo.png", "q1 report.pdf"]


# Broken mail ----------------------------------------------------------------------------

BROKEN = {
    "no boundary": b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nbody only\r\n",
    "boundary never seen": (
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--other\r\nhello\r\n"
    ),
    "unclosed part": (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=a\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!not base64!!\r\n"
    ),
    "unknown charset": b"Content-Type: text/plain; charset=x-nope\r\n\r\n\xff\xfe text\r\n",
    "8-bit headers": b"Subject: \xff\xfe caf\xc3\xa9\r\nFrom: \xe9 <a@\xff>\r\n\r\n\xe9\r\n",
    "garbage headers": b"::::\r\n: no name\r\nTo: <<<@@@>>>, ,\r\nDate: yesterday\r\n\r\nx\r\n",
    "bad content id": (
        b"Content-Type: multipart/related; boundary=b\r\n\r\n--b\r\nContent-Type: image/png\r\n"
        b"Content-ID: <%zz%>\r\nContent-Disposition: inline\r\n\r\nxx\r\n--b--\r\n"
    ),
    "nested rfc822": (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=f.eml\r\n\r\n"
        b"Subject: inner\r\n\r\ninner body\r\n--b\r\n"
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        b"Final-Recipient: rfc822; a@b\r\n--b--\r\n"
    ),
    "control bytes in a part's type": (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/p\x80d\x00f\r\nContent-Disposition: attachment; "
        b"filename=a.pdf\r\n\r\nxx\r\n--b--\r\n"
    ),
    "deep nesting": (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(60)
        )
        + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    ),
    "empty": b"",
}


def check_every_route(http: httpx.Client, message_id: str) -> None:
    """Every Mailpit route answers the message with JSON or bytes, never a 500."""
    summary = http.get("/api/v1/messages", params={"limit": 1}).json()["messages"][0]
    assert summary["ID"] == message_id
    body = http.get(f"/api/v1/message/{message_id}")
    assert body.status_code == 200, body.text
    message = body.json()
    assert isinstance(message["Text"], str)
    assert http.get(f"/api/v1/message/{message_id}/headers").status_code == 200
    assert http.get(f"/api/v1/message/{message_id}/raw").status_code == 200
    for part in (*message["Inline"], *message["Attachments"]):
        response = http.get(f"/api/v1/message/{message_id}/part/{part['PartID']}")
        assert response.status_code == 200
        assert len(response.content) == part["Size"]
    assert http.get("/api/v1/search", params={"query": "x -y to:z"}).status_code == 200


@pytest.mark.parametrize("raw", BROKEN.values(), ids=BROKEN.keys())
def test_broken_mime_never_fails_a_route(
    server: FakeSMTPServer, http: httpx.Client, raw: bytes
) -> None:
    send(server, raw)
    check_every_route(http, server.messages()[0].id)


def test_nested_rfc822_is_one_part_with_its_body(
    server: FakeSMTPServer, http: httpx.Client
) -> None:
    send(server, BROKEN["nested rfc822"])
    message = http.get("/api/v1/message/latest").json()
    [attached] = message["Attachments"]
    assert (attached["PartID"], attached["ContentType"]) == ("1", "message/rfc822")
    part = http.get(f"/api/v1/message/{message['ID']}/part/1")
    assert part.content.startswith(b"Subject: inner\r\n\r\ninner body")


def mangled(raw: bytes) -> st.SearchStrategy[bytes]:
    """``raw`` cut short, with a stretch removed or bytes put in: broken MIME of all kinds."""
    position = st.integers(0, len(raw))
    return st.one_of(
        position.map(lambda end: raw[:end]),
        st.tuples(position, st.integers(1, 200)).map(lambda c: raw[: c[0]] + raw[c[0] + c[1] :]),
        st.tuples(position, st.binary(min_size=1, max_size=60)).map(
            lambda c: raw[: c[0]] + c[1] + raw[c[0] :]
        ),
    )


def test_mangled_mail_never_fails_a_route(server: FakeSMTPServer, http: httpx.Client) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=mangled(RICH))
    def check(raw: bytes) -> None:
        send(server, raw)
        check_every_route(http, server.messages()[0].id)

    check()


@pytest.mark.parametrize(
    ("header", "links", "errors"),
    [
        ("<https://example.com/u> (comment)", ["https://example.com/u"], ""),
        ("https://example.com/u", [], '"https://example.com/u" no valid unsubscribe links found'),
        ("x <https://example.com/u>", [], '"x <https://example.com/u>" should be enclosed in <>'),
        ("<a:b> <c:d>", [], '"<a:b> <c:d>" <> should be split with a comma and optional spaces'),
        (
            "<mailto:a@b>, <mailto:c@d>",
            ["mailto:a@b"],
            '"mailto:c@d" should only contain one mailto:',
        ),
        ("<ftp://x>", [], '"ftp://x" should start with either http(s):// or mailto:'),
        ("<https://x/a b>", [], '"https://x/a b" should not contain spaces'),
        (
            "<mailto:a@b>, <https://x>, <https://y>",
            [],
            '"<mailto:a@b>, <https://x>, <https://y>" should include a maximum of one email and '
            "one HTTP link",
        ),
    ],
)
def test_list_unsubscribe_links_and_errors_as_mailpit_reads_them(
    server: FakeSMTPServer, http: httpx.Client, header: str, links: list[str], errors: str
) -> None:
    send(server, f"List-Unsubscribe: {header}\r\nSubject: u\r\n\r\nx\r\n".encode())
    unsubscribe = http.get("/api/v1/message/latest").json()["ListUnsubscribe"]
    assert unsubscribe == {"Header": header, "Links": links, "Errors": errors, "HeaderPost": ""}


def test_an_unknown_time_zone_is_local_time(http: httpx.Client, searchable: dict[str, str]) -> None:
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    everything = [searchable[n] for n in ("news", "invoice", "rich")]
    assert ids(http, f"after:{two_days_ago}", tz="Nowhere/Special") == everything
    assert ids(http, f"after:{two_days_ago}", tz="../etc") == everything
