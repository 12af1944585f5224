"""mailpit-api-client (PyPI), a Mailpit client written by others, against fakesmtp.

Used as its README and docstrings show: ``mailpit.client.api.API(url)`` and its
methods, and its unittest helper ``EMailTestCase``. It has no search call (search is
covered in test_mailpit_api.py and by the npm client, nox -s mailpit_npm).

Two things it does are fixed by Mailpit, not by fakesmtp, and these tests pin them:
``delete_messages(ids)`` sends the ids as a form, which Mailpit's JSON decoder cannot
read, so Mailpit (and fakesmtp) delete every message; ``put_messages`` sends a form
too, which Mailpit refuses with 400. Its ``Headers`` model needs a Delivered-To
header, which Mailpit does not add, so the test message carries one.
"""

from __future__ import annotations

import io
import smtplib
import unittest
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage

import httpx
import mailpit.client.api
import mailpit.client.models
import pytest
from mailpit.testing.unittest import EMailTestCase

from fakesmtp import FakeSMTPServer
from fakesmtp.pytest_plugin import FakeSMTPFactory

pytestmark = pytest.mark.unit

CSV = "name,total\nalice,10\nbob,20\n"
CSV_AS_SENT = CSV.replace("\n", "\r\n")  # a text part's line ends go over SMTP as CRLF


def make_message(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@example.com>"
    msg["To"] = "Bob <bob@example.org>"
    msg["Cc"] = "carol@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    msg["Date"] = "Tue, 02 Jan 2024 10:20:30 +0100"
    msg["Delivered-To"] = "bob@example.org"
    msg.set_content(f"Hello Bob, {subject}.\n")
    msg.add_alternative(f"<p>Hello <b>Bob</b>, {subject}.</p>\n", subtype="html")
    msg.add_attachment(CSV, subtype="csv", filename="totals.csv")
    return msg.as_bytes(policy=policy.SMTP)


@pytest.fixture
def server(fakesmtp_factory: FakeSMTPFactory) -> FakeSMTPServer:
    result: FakeSMTPServer = fakesmtp_factory(http_port=0)
    with smtplib.SMTP(result.host, result.port, timeout=5) as client:
        for subject in ("first report", "second report", "third report"):
            client.sendmail("alice@example.com", ["bob@example.org"], make_message(subject))
    return result


@pytest.fixture
def api(server: FakeSMTPServer) -> mailpit.client.api.API:
    assert server.http_url is not None
    return mailpit.client.api.API(server.http_url, timeout=5)


def test_get_messages_lists_summaries_newest_first(
    server: FakeSMTPServer, api: mailpit.client.api.API
) -> None:
    messages = api.get_messages()
    assert isinstance(messages, mailpit.client.models.Messages)
    assert (messages.total, messages.unread, messages.count, messages.start) == (3, 3, 3, 0)
    assert [m.subject for m in messages.messages] == [
        "third report",
        "second report",
        "first report",
    ]
    newest = messages.messages[0]
    assert newest.id == server.messages()[0].id
    assert newest.message_id == "third-report@example.com"
    assert newest.read is False
    assert newest.from_ == mailpit.client.models.Contact("Alice Example", "alice@example.com")
    assert newest.to == [mailpit.client.models.Contact("Bob", "bob@example.org")]
    assert newest.cc == [mailpit.client.models.Contact("", "carol@example.org")]
    assert newest.bcc == []
    assert (newest.size, newest.attachments) == (server.messages()[0].size, 1)
    assert datetime.now(UTC) - timedelta(seconds=30) < newest.created <= datetime.now(UTC)


def test_get_messages_pages_with_limit_and_start(api: mailpit.client.api.API) -> None:
    page = api.get_messages(limit=1, start=1)
    assert (page.total, page.count, page.start) == (3, 1, 1)
    assert [m.subject for m in page.messages] == ["second report"]


def test_get_message_has_text_html_and_attachments(
    server: FakeSMTPServer, api: mailpit.client.api.API
) -> None:
    summary = api.get_messages().messages[-1]
    message = api.get_message(summary.id)
    assert isinstance(message, mailpit.client.models.Message)
    assert (message.id, message.message_id, message.subject) == (
        summary.id,
        "first-report@example.com",
        "first report",
    )
    assert message.read is True
    assert message.from_ == summary.from_
    assert message.to == summary.to
    assert message.date == datetime(2024, 1, 2, 10, 20, 30, tzinfo=timezone(timedelta(hours=1)))
    assert message.text == "Hello Bob, first report.\r\n"
    assert message.html == "<p>Hello <b>Bob</b>, first report.</p>\r\n"
    assert message.size == server.messages()[-1].size
    assert message.inline == []
    assert message.attachments == [
        mailpit.client.models.Attachment("2", "totals.csv", "text/csv", "", len(CSV_AS_SENT))
    ]
    # Reading it marked it read, as in Mailpit.
    assert api.get_messages().unread == 2


def test_get_message_latest(api: mailpit.client.api.API) -> None:
    assert api.get_message("latest").subject == "third report"


def test_get_message_of_an_unknown_id_raises_404(api: mailpit.client.api.API) -> None:
    with pytest.raises(httpx.HTTPStatusError) as raised:
        api.get_message("no-such-id")
    assert raised.value.response.status_code == 404
    assert api.last_response is not None
    assert api.last_response.text == "404 page not found"


def test_get_message_headers(api: mailpit.client.api.API) -> None:
    message_id = api.get_messages().messages[0].id
    headers = api.get_message_headers(message_id)
    assert isinstance(headers, mailpit.client.models.Headers)
    assert headers.from_ == ["Alice Example <alice@example.com>"]
    assert headers.message_id == ["<third-report@example.com>"]
    assert headers.delivered_to == ["bob@example.org"]
    assert headers.date == [datetime(2024, 1, 2, 10, 20, 30, tzinfo=timezone(timedelta(hours=1)))]
    assert headers.content_type[0].startswith("multipart/mixed; boundary=")
    assert headers.additional["Subject"] == ["third report"]
    assert headers.additional["Mime-Version"] == ["1.0"]


def test_get_message_attachment_returns_the_part(api: mailpit.client.api.API) -> None:
    message = api.get_message("latest")
    [attachment] = message.attachments
    assert api.get_message_attachment(message.id, attachment.part_id) == CSV_AS_SENT
    assert api.last_response is not None
    assert api.last_response.headers["content-type"] == "text/csv"


def test_delete_messages_with_ids_deletes_every_message_as_mailpit_does(
    server: FakeSMTPServer, api: mailpit.client.api.API
) -> None:
    """The client sends the ids as a form; Mailpit's JSON decoder fails on it and
    then deletes everything. The package's own pytest fixture relies on that: it
    passes the ids of the first page only and expects an empty mailbox."""
    one = api.get_messages().messages[0].id
    api.delete_messages([one])
    assert api.get_messages().total == 0
    assert server.messages() == []


def test_delete_messages_with_no_ids_deletes_every_message(
    server: FakeSMTPServer, api: mailpit.client.api.API
) -> None:
    api.delete_messages([])
    assert api.get_messages().total == 0
    assert server.messages() == []


def test_put_messages_is_refused_as_mailpit_refuses_its_form(
    api: mailpit.client.api.API,
) -> None:
    message_id = api.get_messages().messages[0].id
    with pytest.raises(httpx.HTTPStatusError) as raised:
        api.put_messages([message_id], "Read", True)
    assert raised.value.response.status_code == 400
    assert api.get_messages().unread == 3


def test_email_test_case_finds_a_received_message(server: FakeSMTPServer) -> None:
    """The package's unittest helper, subclassed as its README says."""
    url = server.http_url

    class ReceivedMail(EMailTestCase):
        api_url = url

        def test_received(self) -> None:
            self.assertMessageReceived("second-report@example.com")

        def test_not_received(self) -> None:
            with pytest.raises(self.failureException):
                self.assertMessageReceived("never-sent@example.com")

    suite = unittest.defaultTestLoader.loadTestsFromTestCase(ReceivedMail)
    result = unittest.TextTestRunner(stream=io.StringIO()).run(suite)
    assert (result.testsRun, result.failures, result.errors) == (2, [], [])
