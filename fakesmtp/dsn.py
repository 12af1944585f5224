"""Delivery status notifications (RFC 3464), as a relay sends when it gives up on a recipient.

A DSN is ``multipart/report; report-type=delivery-status`` with three parts: a
note for people, the ``message/delivery-status`` fields for programs (one block
about the message, one per recipient), and the original message's headers as
``text/rfc822-headers`` (RFC 6522), which is how a bounce is matched to what was
sent.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message, MIMEPart
from email.utils import format_datetime, make_msgid

# An RFC 3463 status code at the start of a reply's text, e.g. "5.1.1 No such user".
_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?=\s|$)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def status_for(code: int, text: str) -> str:
    """The DSN ``Status``: the x.y.z the text starts with if its class agrees with
    ``code``, else the class alone (``5.0.0``, ``4.0.0``)."""
    klass = str(code)[0]
    found = _STATUS.match(text)
    if found is not None and found[1] == klass:
        return found[0]
    return f"{klass}.0.0"


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[str],
    code: int,
    text: str,
    original: bytes,
    arrival: datetime,
) -> EmailMessage:
    """A DSN to ``sender`` saying ``code text`` for each of ``recipients``.

    A 5xx ``code`` reports ``Action: failed``, a 4xx ``Action: delayed``.
    ``original`` is the message as received; only its headers are returned.
    """
    delayed = code < 500
    action = "delayed" if delayed else "failed"
    status = status_for(code, text)

    dsn = EmailMessage()
    dsn["From"] = f"MAILER-DAEMON@{reporting_mta}"
    dsn["To"] = sender
    # Postfix's subjects, which people and bounce parsers know.
    dsn["Subject"] = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    dsn["Date"] = format_datetime(datetime.now(UTC))
    dsn["Message-ID"] = make_msgid(domain=reporting_mta)
    # RFC 3834: an automatic reply, so that no one answers it automatically.
    dsn["Auto-Submitted"] = "auto-replied"
    dsn["MIME-Version"] = "1.0"
    dsn["Content-Type"] = "multipart/report; report-type=delivery-status"

    note = MIMEPart()
    note.set_content(_explanation(reporting_mta, recipients, code, text, delayed=delayed))

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks: list[Message | str] = [per_message]
    for recipient in recipients:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {recipient}"
        block["Action"] = action
        block["Status"] = status
        block["Diagnostic-Code"] = f"smtp; {code} {text}"
        blocks.append(block)
    # The email package writes a message/delivery-status payload given as a list
    # of header blocks, and parses it back into one.
    delivery_status = MIMEPart()
    delivery_status["Content-Type"] = "message/delivery-status"
    delivery_status.set_payload(blocks)

    headers = MIMEPart()
    headers.set_content(_original_headers(original), subtype="rfc822-headers")

    dsn.set_payload([note, delivery_status, headers])
    return dsn


def _explanation(
    reporting_mta: str, recipients: Sequence[str], code: int, text: str, *, delayed: bool
) -> str:
    outcome = (
        "Delivery of your message to the recipients below has been delayed."
        if delayed
        else "Your message could not be delivered to the recipients below."
    )
    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        outcome,
        "(fakesmtp sent this report on purpose: a bounce fault rule fired.)",
        "",
        *(f"<{recipient}>: {code} {text}" for recipient in recipients),
    ]
    return "\n".join(lines) + "\n"


def _original_headers(original: bytes) -> str:
    head = _HEADER_END.split(original, maxsplit=1)[0]
    return head.decode("utf-8", "replace").replace("\r\n", "\n") + "\n"


def send_dsn(relay: tuple[str, int], recipient: str, dsn: EmailMessage, timeout: float) -> None:
    """Hand ``dsn`` to ``relay`` for ``recipient``, from the null sender ``<>`` (RFC
    5321 4.5.5: a DSN must never be answered by another DSN).

    smtplib's and the socket's errors propagate: the caller counts the failure.
    """
    utf8 = not recipient.isascii()
    data = dsn.as_bytes(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
    host, port = relay
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        client.sendmail("", [recipient], data, mail_options=["SMTPUTF8"] if utf8 else [])
