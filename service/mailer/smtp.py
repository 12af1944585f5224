"""smtplib.SMTP with an overall deadline on every reply and every send, and the
TLS context. smtplib's timeout is per recv(), so a server dripping one byte a
second would never trip it."""

from __future__ import annotations

import functools
import math
import re
import select
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.errors import PermanentDeliveryError
from service.mailer.classify import SMTPProtocolError

if TYPE_CHECKING:
    from service.config import Settings

__all__ = ["BoundedSMTP", "BoundedSMTPSSL", "local_hostname", "make_ssl_context"]

# Replies: smtplib's own bound on one line (8192) and ours on a whole reply, so a
# server sending an endless line or endless "250-" lines cannot grow memory.
_MAXLINE = 8192  # smtplib._MAXLINE (private there)
_MAX_REPLY_LINES = 200
# Sending: besides SMTP_TIMEOUT, one more second per this many bytes, so a large
# message on a slow link may take longer than a command, yet a server that reads one
# byte a second cannot hold a thread for ever.
_MIN_SEND_RATE = 256 * 1024
_LEADING_DOT = re.compile(rb"(?m)^\.")
# What a non-blocking socket raises when it has to wait, and for what: plain sockets
# raise BlockingIOError; a TLS socket may need to read to write and the reverse.
_WANTS_READ = (BlockingIOError, ssl.SSLWantReadError)


class BoundedSMTP(smtplib.SMTP):
    """smtplib.SMTP whose every reply must arrive in full within `timeout` seconds.

    smtplib's timeout is per recv(), so a server dripping one byte a second never
    trips it; here each reply and each send has an overall deadline.
    """

    def __init__(self, host: str, port: int, *, timeout: float, **kwargs: Any) -> None:
        self._rbuf = bytearray()
        self._poll: select.poll | None = None  # set by nonblocking()
        self._fd = -1
        self._events = 0
        super().__init__(host, port, timeout=timeout, **kwargs)

    def nonblocking(self) -> None:
        """Switch the open session's socket to non-blocking I/O, once EHLO, STARTTLS
        and AUTH are done (the TLS handshake needs a blocking socket). From here each
        send and recv is tried at once and waits in poll() only when it would block,
        under the same deadlines: a socket with a timeout costs an ioctl (settimeout)
        and a poll() before every send and recv, each a release of the GIL, which
        the delivery threads then queue to take back."""
        sock = self.sock
        if sock is None or self._poll is not None:
            return
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._events = select.POLLIN
        self._poll = select.poll()
        self._poll.register(self._fd, self._events)

    def _wait(self, events: int, deadline: float) -> bool:
        """Poll the non-blocking socket for `events` until `deadline`; False if it passed."""
        poll = self._poll
        assert poll is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if events != self._events:
            poll.modify(self._fd, events)
            self._events = events
        poll.poll(math.ceil(remaining * 1000))
        return True

    def _recv(self, sock: socket.socket, deadline: float) -> bytes:
        """One recv() of what has arrived, waiting until `deadline` at most."""
        if self._poll is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            return sock.recv(8192)
        # A plain socket waits first: a reply is seldom there the moment it is
        # asked for, and a recv() that would block costs a system call and an
        # exception. A TLS socket may hold decrypted bytes that poll() cannot see.
        events = 0 if isinstance(sock, ssl.SSLSocket) else select.POLLIN
        while True:
            if events and not self._wait(events, deadline):
                raise TimeoutError
            try:
                return sock.recv(8192)
            except _WANTS_READ:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT

    def _readline(self, deadline: float) -> bytes:
        buf = self._rbuf
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                line = bytes(buf[: end + 1])
                del buf[: end + 1]
                return line
            if len(buf) > _MAXLINE:
                self.close()
                raise SMTPProtocolError(f"reply line longer than {_MAXLINE} bytes")
            sock = self.sock
            if sock is None:
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            try:
                chunk = self._recv(sock, deadline)
            except TimeoutError:
                self.close()
                raise TimeoutError(f"no complete SMTP reply within {self.timeout:g}s") from None
            except OSError as exc:
                self.close()
                raise smtplib.SMTPServerDisconnected(
                    f"Connection unexpectedly closed: {exc}"
                ) from exc
            if not chunk:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            buf += chunk

    def getreply(self) -> tuple[int, bytes]:
        # The same parsing as smtplib.SMTP.getreply, reading under one deadline.
        deadline = time.monotonic() + self.timeout
        lines: list[bytes] = []
        while True:
            line = self._readline(deadline)
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
            if len(lines) >= _MAX_REPLY_LINES:
                self.close()
                raise SMTPProtocolError(f"reply longer than {_MAX_REPLY_LINES} lines")
        return code, b"\n".join(lines)

    def send(self, s: Any) -> None:
        if isinstance(s, str):
            s = s.encode(self.command_encoding)
        sock = self.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        view = memoryview(s)
        budget = self.timeout + len(view) / _MIN_SEND_RATE
        deadline = time.monotonic() + budget
        try:
            while view:
                if self._poll is not None:
                    try:
                        sent = sock.send(view)
                    except ssl.SSLWantReadError:
                        events = select.POLLIN
                    except (BlockingIOError, ssl.SSLWantWriteError):
                        events = select.POLLOUT
                    else:
                        view = view[sent:]
                        continue
                    if self._wait(events, deadline):
                        continue
                    raise TimeoutError
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                sent = sock.send(view)
                view = view[sent:]
        except TimeoutError as exc:
            self.close()
            raise TimeoutError(f"could not send {len(s)} bytes within {budget:g}s") from exc
        except OSError as exc:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"Server not connected: {exc}") from exc

    def data(  # type: ignore[override]
        self, msg: bytes, before_dot: Callable[[], None] | None = None
    ) -> tuple[int, bytes]:
        """smtplib's DATA, with `before_dot` called between the 354 and the body."""
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        return self.send_body(msg, before_dot)

    def send_body(
        self, msg: bytes, before_dot: Callable[[], None] | None = None, then: bytes = b""
    ) -> tuple[int, bytes]:
        """After a 354: the body, dot-stuffed, its final dot, and the relay's reply.

        `before_dot` is called first; if it raises, the socket is closed with the
        body unsent: a relay discards a transaction whose final dot never came
        (RFC 5321 4.1.1.4). `then` (pipelined commands) goes in the same write,
        after the dot; their replies are left unread.
        """
        if before_dot is not None:
            try:
                before_dot()
            except BaseException:
                self.close()
                raise
        body = _LEADING_DOT.sub(b"..", msg)  # dot-stuffing, as smtplib's data() does
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body + b".\r\n" + then)
        return self.getreply()

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        reply = super().starttls(*args, **kwargs)
        # Anything read past the "220" was sent in plain text before the handshake:
        # a STARTTLS command injection. Drop it (as smtplib does with its file buffer).
        self._rbuf.clear()
        return reply

    def close(self) -> None:
        self._rbuf.clear()
        self._poll = None
        super().close()


class BoundedSMTPSSL(BoundedSMTP, smtplib.SMTP_SSL):
    """Implicit TLS. The handshake is bounded by the socket timeout: CPython's
    do_handshake() applies it as an overall deadline, not per read."""


@functools.cache
def local_hostname() -> str:
    # smtplib would call getfqdn() (a DNS lookup) on every connect; once is enough.
    return socket.getfqdn()


def make_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Certificates and host name verified (unless SMTP_VERIFY_TLS=false), TLS 1.2
    minimum, SMTP_CA_FILE trusted in addition to the system store."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.smtp_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.smtp_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise PermanentDeliveryError(
                f"cannot load SMTP_CA_FILE {settings.smtp_ca_file}: {exc}"
            ) from exc
    if not settings.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
