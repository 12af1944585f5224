"""The one catalogue of SMTP replies fakesmtp sends, shared with the tests.

Written in the style of aiosmtpd's ``testing/statuscodes.py``: a test asserts
``reply.code == replies.GREYLISTED.code`` instead of repeating a literal that
can drift from what the server says.
"""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    """An SMTP reply: the three-digit code and the text after it."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def closes(self) -> bool:
        """421 means the server closes the connection after saying it (RFC 5321 3.8)."""
        return self.code == 421


QUEUED = Reply(250, "2.0.0 OK: queued as %s")
SERVICE_CLOSING = Reply(421, "4.3.2 Service not available, closing transmission channel")
GREYLISTED = Reply(451, "4.7.1 Greylisted, please try again later")
RATE_LIMITED_TEMPORARY = Reply(451, "4.7.0 Rate limit exceeded, try again later")
RATE_LIMITED_CLOSING = Reply(421, "4.7.0 Rate limit exceeded, closing connection")
TOO_MANY_MESSAGES = Reply(421, "4.7.0 Too many messages on this connection")
INTERNAL_ERROR = Reply(451, "4.3.0 fakesmtp internal error")
AUTH_SUCCESS = Reply(235, "2.7.0 Authentication successful")
AUTH_REQUIRED = Reply(530, "5.7.0 Authentication required")
AUTH_INVALID = Reply(535, "5.7.8 Authentication credentials invalid")
TLS_REQUIRED = Reply(530, "Must issue a STARTTLS command first")
TLS_FAILED = Reply(454, "4.7.0 TLS handshake failed")
MESSAGE_TOO_BIG = Reply(552, "Error: Too much mail data")
SIZE_TOO_BIG = Reply(552, "Error: message size exceeds fixed maximum message size")
LINE_TOO_LONG = Reply(500, "Line too long (see RFC5321 4.5.3.1.6)")
COMMAND_TOO_LONG = Reply(500, "Command line too long")

#: The text a fault rule replies with when it names only a code.
DEFAULT_FAULT_TEXT: dict[int, str] = {
    421: SERVICE_CLOSING.text,
    450: "4.2.0 Mailbox unavailable (fakesmtp fault)",
    451: "4.3.0 Temporary failure (fakesmtp fault)",
    452: "4.3.1 Insufficient system storage (fakesmtp fault)",
    550: "5.1.1 Mailbox unavailable (fakesmtp fault)",
    552: "5.3.4 Message too big (fakesmtp fault)",
    553: "5.1.3 Mailbox name not allowed (fakesmtp fault)",
    554: "5.0.0 Transaction failed (fakesmtp fault)",
}


def default_fault_text(code: int) -> str:
    """The text for a fault reply that names only its code."""
    if code in DEFAULT_FAULT_TEXT:
        return DEFAULT_FAULT_TEXT[code]
    if 400 <= code < 500:
        return "4.0.0 Temporary failure (fakesmtp fault)"
    if code >= 500:
        return "5.0.0 Permanent failure (fakesmtp fault)"
    return "fakesmtp fault"
