"""Small SMTP clients for the fakesmtp tests: smtplib for dialogues, raw sockets for abuse."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from email import policy
from email.message import EmailMessage

from fakesmtp import FakeSMTPServer


def make_message(
    subject: str = "Hello",
    *,
    sender: str = "sender@example.com",
    to: str = "rcpt@example.com",
    body: str = "plain body\n",
    html: str | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{re.sub('[^A-Za-z0-9]', '-', subject)}@example.com>"
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        name, data = attachment
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=policy.SMTP)


def client_tls_context(cert_path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert_path)


class RawClient:
    """A line-level SMTP client over a plain socket, for what smtplib refuses to send."""

    def __init__(self, server: FakeSMTPServer, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, list[bytes]]:
        """Read one (possibly multi-line) reply."""
        lines: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.rstrip(b"\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> tuple[int, list[bytes]]:
        self.send(line + b"\r\n")
        return self.reply()

    def open_transaction(self) -> None:
        """Greeting, EHLO, MAIL and RCPT, replies unread, for tests of what comes after."""
        self.reply()
        for line in (b"EHLO me", b"MAIL FROM:<s@example.com>", b"RCPT TO:<r@example.com>"):
            self.command(line)

    def closed_by_server(self) -> bool:
        try:
            return self.file.readline() == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_message(server: FakeSMTPServer, subject: str = "Hello", **fields: str) -> None:
    """One message through smtplib, built by make_message."""
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("sender@example.com", ["rcpt@example.com"], make_message(subject, **fields))
