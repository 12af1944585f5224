"""SMTPConnection: one SMTP session reused across messages, the production Sender."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import DeliveryError, PermanentDeliveryError, ShuttingDown
from service.mailer.classify import classify, reply_text
from service.mailer.smtp import BoundedSMTP, BoundedSMTPSSL, local_hostname, make_ssl_context
from service.types import RejectedRecipient, RenderedMessage, SendResult

if TYPE_CHECKING:
    from service.config import Settings

__all__ = ["SMTPConnection", "connection_factory"]

log = logging.getLogger("service.mailer")


def _path(addr: str) -> str:
    """An envelope address as MAIL/RCPT take it. The addresses are addr-specs checked
    at accept (service.syntax), so this is smtplib.quoteaddr without its parse of
    a display name, which cost a sixth of the delivery thread's time."""
    return f"<{addr}>" if addr and addr != "<>" else "<>"


class _StaleConnection(Exception):
    """A reused connection died while idle; the message was not started on it."""


class SMTPConnection:
    """One SMTP session that is reused across messages (RSET between transactions).

    Not thread-safe: one per delivery thread. Reconnects when the connection is
    closed, broken, idle for longer than settings.smtp_idle_timeout, answered
    421, or has carried settings.smtp_max_messages_per_connection messages.

    A successful transaction leaves the server ready for the next MAIL (RFC 5321
    4.1.1.4), so RSET is sent only after a failed one, saving a round trip per message.

    Where the relay offers PIPELINING (RFC 2920), MAIL, every RCPT and DATA go in
    one write and their replies are read in order (an RSET owed by a failed
    transaction goes first in the same write): two round trips per message, the
    envelope's and the final dot's, instead of three plus one per recipient. When
    the caller names the message it sends next, that message's envelope goes in
    the final dot's write (a message's content may open a group, RFC 2920 3.1):
    one round trip per message in a stream of them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._settings = settings
        self._clock = clock
        self._ssl_context = ssl_context
        self._smtp: BoundedSMTP | None = None
        self._messages = 0  # transactions on the current session
        self._rset_owed = False  # a failed transaction to clear, pipelined with the next
        # The message whose envelope went with the last final dot, its replies unread.
        self._ahead: RenderedMessage | None = None
        self._last_used = 0.0
        self.connections_opened = 0  # for tests and metrics

    @property
    def is_open(self) -> bool:
        """A session is open and was left in a clean state."""
        return self._smtp is not None

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context(self._settings)
        return self._ssl_context

    def _open(self) -> BoundedSMTP:
        s = self._settings
        context = self._context() if s.smtp_security != "none" else None
        smtp: BoundedSMTP | None = None
        try:
            if s.smtp_security == "ssl":
                smtp = BoundedSMTPSSL(
                    s.smtp_host,
                    s.smtp_port,
                    timeout=s.smtp_timeout,
                    local_hostname=local_hostname(),
                    context=context,
                )
            else:
                smtp = BoundedSMTP(
                    s.smtp_host,
                    s.smtp_port,
                    timeout=s.smtp_timeout,
                    local_hostname=local_hostname(),
                )
            smtp.ehlo_or_helo_if_needed()
            if s.smtp_security == "starttls":
                if not smtp.has_extn("starttls"):
                    # Never a silent downgrade to plain text.
                    raise PermanentDeliveryError(
                        f"SMTP_SECURITY=starttls but {s.smtp_host}:{s.smtp_port} does not "
                        "offer STARTTLS; refusing to send in plain text"
                    )
                smtp.starttls(context=context)
                smtp.ehlo_or_helo_if_needed()
            if s.smtp_username is not None and s.smtp_password is not None:
                smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
            smtp.nonblocking()
        except BaseException as exc:
            if smtp is not None:
                smtp.close()
            if isinstance(exc, DeliveryError):
                raise
            if isinstance(exc, Exception):
                raise classify(exc) from exc
            raise
        self.connections_opened += 1
        log.debug(
            "SMTP session opened to %s:%d (security=%s)", s.smtp_host, s.smtp_port, s.smtp_security
        )
        return smtp

    def _drop(self) -> None:
        self._rset_owed = False
        self._ahead = None
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    def _quit(self) -> None:
        if self._ahead is not None:
            # An envelope in flight: QUIT would be read as its body. Closing the
            # socket without a final dot is what makes the relay discard it.
            self._drop()
            return
        self._rset_owed = False
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except Exception:  # noqa: S110  # a polite goodbye; the socket is closed either way
            pass
        finally:
            smtp.close()

    def _session(self) -> tuple[BoundedSMTP, bool]:
        """The session to use and whether it carried earlier messages."""
        s = self._settings
        if self._smtp is not None and (
            self._clock() - self._last_used > s.smtp_idle_timeout
            or self._messages >= s.smtp_max_messages_per_connection
        ):
            self._quit()
        if self._smtp is None:
            self._smtp = self._open()
            self._messages = 0
            self._last_used = self._clock()
            return self._smtp, False
        return self._smtp, True

    def _after_failure(self, smtp: BoundedSMTP, code: int) -> None:
        """Leave a clean session after a refused transaction, or none at all."""
        if code == 421 or smtp.sock is None:
            # 421: the server is closing the channel (RFC 5321 3.8).
            self._drop()
            return
        if smtp.has_extn("pipelining"):
            self._rset_owed = True  # sent with the next envelope, no round trip of its own
            return
        try:
            rset_code, _ = smtp.rset()
        except Exception:
            rset_code = -1
        if rset_code != 250:
            self._drop()

    @staticmethod
    def _options(smtp: BoundedSMTP, message: RenderedMessage) -> list[str]:
        """MAIL's parameters for `message`; PermanentDeliveryError if the relay
        cannot take it."""
        options: list[str] = []
        if message.smtputf8:
            if not smtp.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    "the relay does not offer SMTPUTF8, which this message needs for its "
                    "non-ASCII address(es)"
                )
            options.append("SMTPUTF8")
            if smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(message.data)}")
        return options

    @staticmethod
    def _envelope(message: RenderedMessage, options: list[str], commands: list[str]) -> str:
        """`commands`, then MAIL (with `options`) and every RCPT, one line each;
        `commands` is extended with them."""
        extra = "".join(f" {option}" for option in options)
        commands.append(f"MAIL FROM:{_path(message.mail_from)}{extra}")
        commands += [f"RCPT TO:{_path(rcpt)}" for rcpt in message.rcpt_tos]
        return "".join(f"{command}\r\n" for command in commands)

    def _envelope_ahead(self, smtp: BoundedSMTP, message: RenderedMessage) -> bytes:
        """`message`'s envelope (MAIL, RCPTs, DATA) to go after a final dot, or b""
        when it cannot go ahead: its own send() then says why."""
        try:
            options = self._options(smtp, message)
        except PermanentDeliveryError:
            return b""
        commands: list[str] = []
        batch = self._envelope(message, options, commands) + "DATA\r\n"
        if batch.count("\n") != len(commands) + 1 or "\r" in batch.replace("\r\n", ""):
            return b""
        try:
            return batch.encode("utf-8" if message.smtputf8 else "ascii")
        except UnicodeEncodeError:
            return b""

    def _transaction(
        self,
        smtp: BoundedSMTP,
        message: RenderedMessage,
        reused: bool,
        before_dot: Callable[[], None] | None,
        next_message: RenderedMessage | None,
    ) -> SendResult:
        options = self._options(smtp, message)
        self._messages += 1
        if smtp.has_extn("pipelining"):
            return self._pipelined(smtp, message, options, reused, before_dot, next_message)
        try:
            code, reply = smtp.mail(message.mail_from, options)
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            # Nothing of this message reached the server: if the session is an idle
            # one the server dropped, trying again on a fresh one costs no attempt.
            if reused:
                raise _StaleConnection from exc
            raise
        if code != 250:
            if code == 421 and reused:
                raise _StaleConnection from smtplib.SMTPSenderRefused(
                    code, reply, message.mail_from
                )
            self._after_failure(smtp, code)
            raise classify(smtplib.SMTPSenderRefused(code, reply, message.mail_from))

        rejected: list[RejectedRecipient] = []
        for rcpt in message.rcpt_tos:
            code, reply = smtp.rcpt(rcpt)
            if code == 421:
                self._after_failure(smtp, code)
                raise classify(smtplib.SMTPResponseException(code, reply), rcpt)
            if code not in (250, 251):
                rejected.append(RejectedRecipient(rcpt, code, reply_text(reply)))
        if len(rejected) == len(message.rcpt_tos):
            self._after_failure(smtp, 0)
            raise classify(
                smtplib.SMTPRecipientsRefused(
                    {r.recipient: (r.code, r.message.encode()) for r in rejected}
                )
            )

        try:
            code, reply = smtp.data(message.data, before_dot)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (not 354)
            self._after_failure(smtp, exc.smtp_code)
            raise classify(exc) from exc
        if code != 250:
            self._after_failure(smtp, code)
            raise classify(smtplib.SMTPDataError(code, reply))
        return SendResult(rejected=rejected)

    def _pipelined(
        self,
        smtp: BoundedSMTP,
        message: RenderedMessage,
        options: list[str],
        reused: bool,
        before_dot: Callable[[], None] | None,
        next_message: RenderedMessage | None,
    ) -> SendResult:
        """The transaction in two round trips (RFC 2920): MAIL, RCPTs and DATA in one
        write, replies matched in order; then the body and its final dot, with the
        next message's envelope when there is one (one round trip per message in a
        stream). Where the relay offers CHUNKING (RFC 3030) too, one round trip:
        MAIL, RCPTs and `BDAT size LAST` with the whole message in one write."""
        chunking = smtp.has_extn("chunking")
        # Sent ahead: this envelope went with the previous message's final dot, which
        # the relay took (else the session was dropped); its replies come next.
        ahead, self._ahead = self._ahead is message, None
        batch = ""  # nothing to write for an envelope sent ahead (never with CHUNKING)
        if not ahead:
            commands = ["RSET"] if self._rset_owed else []
            batch = self._envelope(message, options, commands)
            if not chunking:
                batch += "DATA\r\n"
                commands.append("DATA")
            if batch.count("\n") != len(commands) or "\r" in batch.replace("\r\n", ""):
                raise PermanentDeliveryError("an envelope address contains a line break")
            smtp.command_encoding = "utf-8" if message.smtputf8 else "ascii"
        payload: str | bytes = batch
        if chunking:
            # BDAT carries the message as it is (no dot-stuffing, no final dot); the
            # LAST chunk is what commits it, so the gate comes before this write.
            body = message.data
            payload = batch.encode(smtp.command_encoding) + b"BDAT %d LAST\r\n" % len(body) + body
            if before_dot is not None:
                before_dot()
        try:
            if payload:
                smtp.send(payload)
            first = smtp.getreply()
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            # Nothing of this message was taken: a session the server dropped while
            # idle costs no attempt (see send()).
            if reused:
                raise _StaleConnection from exc
            raise
        if self._rset_owed:
            self._rset_owed = False
            if first[0] != 250:
                raise _StaleConnection from smtplib.SMTPResponseException(*first)
            first = smtp.getreply()
        code, reply = first
        if code == 421 and reused:
            raise _StaleConnection from smtplib.SMTPSenderRefused(code, reply, message.mail_from)
        if code == 421:
            self._drop()
            raise classify(smtplib.SMTPSenderRefused(code, reply, message.mail_from))
        replies: list[tuple[int, bytes]] = []
        for rcpt in message.rcpt_tos:
            replies.append(smtp.getreply())
            if replies[-1][0] == 421:  # closing: no more replies will come
                self._drop()
                raise classify(smtplib.SMTPResponseException(*replies[-1]), rcpt)
        data_code, data_reply = smtp.getreply()  # DATA's 354, or BDAT's verdict
        if (
            not chunking
            and data_code == 354
            and (code != 250 or all(c not in (250, 251) for c, _ in replies))
        ):
            # The relay opened DATA for a transaction it refused: end the session
            # rather than send it an empty message.
            self._drop()
        if code != 250:
            self._after_failure(smtp, code)
            raise classify(smtplib.SMTPSenderRefused(code, reply, message.mail_from))
        rejected: list[RejectedRecipient] = []
        for rcpt, (rcpt_code, rcpt_reply) in zip(message.rcpt_tos, replies, strict=True):
            if rcpt_code not in (250, 251):
                rejected.append(RejectedRecipient(rcpt, rcpt_code, reply_text(rcpt_reply)))
        if len(rejected) == len(message.rcpt_tos):
            self._after_failure(smtp, 0)
            raise classify(
                smtplib.SMTPRecipientsRefused(
                    {r.recipient: (r.code, r.message.encode()) for r in rejected}
                )
            )
        if chunking:
            if data_code != 250:
                self._after_failure(smtp, data_code)
                raise classify(smtplib.SMTPDataError(data_code, data_reply))
            return SendResult(rejected=rejected)
        if data_code != 354:
            self._after_failure(smtp, data_code)
            raise classify(smtplib.SMTPDataError(data_code, data_reply))
        then = b""
        if (
            next_message is not None
            and self._messages < self._settings.smtp_max_messages_per_connection
        ):
            then = self._envelope_ahead(smtp, next_message)
        code, reply = smtp.send_body(message.data, before_dot, then)
        if then:
            if code == 250:
                self._ahead = next_message
            else:
                # The next envelope is in flight behind a refusal, and no RSET can go
                # before it now: the next message starts on a fresh session.
                self._drop()
        if code != 250:
            self._after_failure(smtp, code)
            raise classify(smtplib.SMTPDataError(code, reply))
        return SendResult(rejected=rejected)

    def send(
        self,
        message: RenderedMessage,
        before_dot: Callable[[], None] | None = None,
        *,
        next_message: RenderedMessage | None = None,
    ) -> SendResult:
        """One attempt. Raises DeliveryError (classified). Partial recipient refusals
        are returned in SendResult.rejected; all refused raises. `before_dot`,
        `next_message`: see service.types.Sender.send."""
        if self._ahead is not None and self._ahead is not message:
            # The envelope sent ahead was for a message the caller did not send
            # after all (handed back, or its lease ran short): start clean.
            self._drop()
        retried = False
        while True:
            smtp, reused = self._session()
            try:
                result = self._transaction(
                    smtp, message, reused and not retried, before_dot, next_message
                )
            except _StaleConnection:
                self._drop()
                log.debug("SMTP session went stale while idle; reconnecting")
                retried = True
                continue
            except DeliveryError:
                raise
            except ShuttingDown:
                # before_dot abandoned the transaction: BoundedSMTP.data closed the
                # socket (with CHUNKING, nothing of the message was sent).
                self._drop()
                raise
            except Exception as exc:
                # The session is in an unknown state (timeout, disconnect, garbage).
                self._drop()
                raise classify(exc) from exc
            finally:
                self._last_used = self._clock()
            if self._messages >= self._settings.smtp_max_messages_per_connection:
                self._quit()
            return result

    def offers(self, extension: str) -> bool:
        """Whether the relay advertises `extension` (e.g. "smtputf8") in its EHLO
        answer, opening a session if none is open. Raises DeliveryError when the
        relay cannot be reached."""
        try:
            smtp, _ = self._session()
        except DeliveryError:
            raise
        except Exception as exc:
            self._drop()
            raise classify(exc) from exc
        return bool(smtp.has_extn(extension))

    def close(self) -> None:
        self._quit()


def connection_factory(settings: Settings) -> Callable[[], SMTPConnection]:
    """A SenderFactory of SMTPConnections that share one SSL context (loading the
    trust store costs milliseconds: once, when the first connection needs it).

    A context that cannot be made (an unreadable SMTP_CA_FILE) is left to each
    connection, which reports it as a PermanentDeliveryError when it opens, so
    that the message it was opened for fails rather than the factory.
    """
    lock = threading.Lock()
    context: ssl.SSLContext | None = None

    def connect() -> SMTPConnection:
        nonlocal context
        if settings.smtp_security != "none" and context is None:
            with lock, contextlib.suppress(PermanentDeliveryError):
                context = context or make_ssl_context(settings)
        return SMTPConnection(settings, ssl_context=context)

    return connect
