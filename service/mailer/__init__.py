"""Builds messages and talks SMTP.

- `render` turns a validated SendRequest into the bytes that go on the wire, once,
  at acceptance (`encode` holds the MIME encoders it uses);
- `classify` maps every smtplib/socket/ssl failure to a Temporary- or
  PermanentDeliveryError; the retry policy (`service.retry`) decides what follows;
- `smtp` bounds every wait on a hostile or dead server with a deadline;
- `connection` keeps one SMTP session open across messages (the production
  `Sender`), and `pool` shares idle ones between the sync path's requests.

The names below are re-exported so that `from service import mailer` reads as one
module to its callers.
"""

from __future__ import annotations

from service.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from service.mailer.classify import SMTPProtocolError, classify
from service.mailer.connection import SMTPConnection, connection_factory
from service.mailer.pool import ConnectionPool
from service.mailer.render import file_parts, render_message
from service.mailer.smtp import make_ssl_context
from service.types import RejectedRecipient, RenderedMessage, SendResult

__all__ = [
    "ConnectionPool",
    "DeliveryError",
    "PermanentDeliveryError",
    "RejectedRecipient",
    "RenderedMessage",
    "SMTPConnection",
    "SMTPProtocolError",
    "SendResult",
    "TemporaryDeliveryError",
    "classify",
    "connection_factory",
    "file_parts",
    "make_ssl_context",
    "render_message",
]
