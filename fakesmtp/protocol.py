"""The SMTP side: an aiosmtpd protocol with fault hooks, and the handler that captures.

Faults fail by *returning* a reply, never by raising: aiosmtpd turns an
exception into a 500, a permanent error, which would silently break a test
of a temporary one.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import logging
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, AnyStr

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
    syntax,
)

from fakesmtp import replies
from fakesmtp.bounces import Bouncer
from fakesmtp.capture import CapturedMessage, MessageStore
from fakesmtp.faults import FaultRule, FaultSet
from fakesmtp.policies import Greylist, TokenBucket

if TYPE_CHECKING:
    from aiosmtpd.smtp import _Missing

    #: What a stage's fault check returns: ``MISSING`` to carry on as normal (the
    #: value aiosmtpd's own hooks use for that), ``""`` when the rule dropped the
    #: connection (nothing left to send), else the reply line to send instead.
    FaultReply = str | _Missing

log = logging.getLogger("fakesmtp")

HOSTNAME = "fakesmtp"


def abort_transport(transport: asyncio.BaseTransport | None) -> None:
    """Drop a connection at once, unsent data and all (close() would flush first)."""
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    elif transport is not None:
        transport.close()


@dataclass
class ServerState:
    """Everything the connections of one server share. Mutated on the loop thread only,
    except ``faults`` and ``store``, which lock for the HTTP API and test threads, and
    ``errors``, which has its own lock."""

    store: MessageStore
    faults: FaultSet
    auth: tuple[str, str] | None = None
    latency: float = 0.0
    implicit_tls: bool = False
    blackhole: bool = False
    pipelining: bool = True
    chunking: bool = True
    max_per_connection: int | None = None
    greylist: Greylist | None = None
    rate_limit: TokenBucket | None = None
    rate_limit_reply: replies.Reply = replies.RATE_LIMITED_TEMPORARY
    sleep: Callable[[float], Any] = asyncio.sleep
    bounce_relay: InitVar[tuple[str, int] | None] = None
    bouncer: Bouncer = field(init=False)
    connections: int = 0
    active: set[FakeSMTPProtocol] = field(default_factory=set)
    received: int = 0
    faults_fired: int = 0
    reply_counts: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[BaseException] = field(default_factory=list)
    errors_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self, bounce_relay: tuple[str, int] | None) -> None:
        self.bouncer = Bouncer(bounce_relay, HOSTNAME, self.record_error)

    def record_error(self, error: BaseException) -> None:
        """Keep an internal error for the server to re-raise when it stops."""
        with self.errors_lock:
            self.errors.append(error)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "active_connections": len(self.active),
            "messages": self.received,
            "stored": len(self.store),
            "stored_total": self.store.stored_total,
            "faults_fired": self.faults_fired,
            "bounces_sent": self.bouncer.sent,
            "bounces_failed": self.bouncer.failed,
            "replies": dict(self.reply_counts),
        }


class FakeSMTPProtocol(SMTP):
    """aiosmtpd's SMTP with fault rules at connect, ehlo and data, latency and drops."""

    def __init__(self, state: ServerState, handler: FakeHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd keeps these limits in a class-level dict that every EHLO grows;
        # a per-connection copy keeps one client's EHLOs from affecting another's.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        # Local development runs AUTH without TLS too (the client's SMTP_SECURITY
        # decides whether to insist on encryption). Passing auth_require_tls=False
        # would make aiosmtpd warn on every connection, an error under pytest's
        # warnings-as-errors, so the check is switched off after construction.
        self._auth_require_tls = False
        self._state = state
        self._dropped = False
        self._close_after_push = False
        self._after_reply: list[Callable[[], None]] = []
        self.messages_accepted = 0
        # The chunks of a BDAT transaction so far; None outside one.
        self._chunks: bytearray | None = None
        self._chunks_too_big = False

    # connection bookkeeping -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self not in self._state.active:
            # Not the second call that STARTTLS makes for the TLS layer.
            self._state.connections += 1
            self._state.active.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._state.active.discard(self)
        super().connection_lost(error)

    @property
    def uses_tls(self) -> bool:
        return self._state.implicit_tls or self._tls_protocol is not None

    def drop(self) -> None:
        """Vanish without a reply, as a crashed or unplugged relay does."""
        self._dropped = True
        abort_transport(self.transport)

    async def push(self, status: AnyStr) -> None:
        if self._dropped:
            return
        line = status if isinstance(status, str) else status.decode("ascii", "replace")
        final = len(line) < 4 or line[3] != "-"
        if final:
            # Count and delay once per reply, not per line of a multi-line reply.
            self._state.reply_counts[line[:3]] += 1
            if self._state.latency:
                await self._state.sleep(self._state.latency)
        await super().push(status)
        if not final:
            return
        if self._close_after_push and self.transport is not None:
            self.transport.close()
        callbacks, self._after_reply = self._after_reply, []
        for callback in callbacks:
            callback()

    async def fault_for(self, stage: str, addresses: Iterable[str] = ()) -> FaultReply:
        """The one check every stage makes: does a fault rule fire here, and what then?"""
        return await self.act(self.fire(stage, addresses))

    def fire(
        self, stage: str, addresses: Iterable[str] = (), recipients: Sequence[str] = ()
    ) -> FaultRule | None:
        """The rule that fires at ``stage`` now, counted, or None."""
        if not self._state.faults:
            return None
        rule = self._state.faults.pick(stage, addresses, recipients)
        if rule is not None:
            self._state.faults_fired += 1
        return rule

    async def act(self, rule: FaultRule | None) -> FaultReply:
        """Do what a fired rule says for this connection, and return the reply.

        A ``delay`` waits and carries on; ``disconnect`` drops the connection; a
        ``reply`` is returned for the stage to send (a 421 also closes after it);
        a ``bounce`` carries on, for the message stage to accept and then bounce.
        """
        if rule is None or rule.action == "bounce":
            return MISSING
        if rule.action == "delay":
            await self._state.sleep(rule.delay)
            return MISSING
        if rule.action == "disconnect":
            self.drop()
            return ""
        if rule.code == 421:
            self._close_after_push = True
        return rule.reply_line

    def close_after_reply(self) -> None:
        self._close_after_push = True

    def after_reply(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the next reply has been sent."""
        self._after_reply.append(callback)

    async def _send_fault(self, reply: str) -> None:
        if reply:
            await self.push(reply)

    # stages aiosmtpd has no handler hook for ----------------------------------
    async def _handle_client(self) -> None:
        reply = await self.fault_for("connect")
        if reply is not MISSING:
            # A refused greeting ends the session (RFC 5321 3.1 lets the server
            # close; clients give up on a non-220 greeting anyway).
            self._close_after_push = True
            await self._send_fault(reply)
            return
        await super()._handle_client()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        envelope = self.envelope
        assert envelope is not None
        if envelope.rcpt_tos and not arg:
            # A DATA out of sequence or with an argument is aiosmtpd's error to answer.
            reply = await self.fault_for("data", (envelope.mail_from or "", *envelope.rcpt_tos))
            if reply is not MISSING:
                await self._send_fault(reply)
                return
        await super().smtp_DATA(arg)

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._chunks = None  # RSET, EHLO and the end of a message end a BDAT transaction

    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030 CHUNKING, which aiosmtpd lacks: BDAT SIZE [LAST]. The chunk's
        bytes are read whatever the answer, so that a refused chunk does not leave
        message text to be read as commands; LAST ends the message as DATA's final
        dot does (the same ``message`` faults, the same capture)."""
        if not self._state.chunking:
            await self.push('500 Error: command "BDAT" not recognized')
            return
        words = (arg or "").split()
        last = len(words) == 2
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or (last and words[1].upper() != "LAST")
        ):
            # Without a size the chunk cannot be skipped: end the session.
            self.close_after_reply()
            await self.push("501 5.5.4 Syntax: BDAT chunk-size [LAST]")
            return
        try:
            chunk = await self._reader.readexactly(int(words[0]))
        except asyncio.IncompleteReadError:
            return  # the client hung up mid-chunk
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            self._set_post_data_state()
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if self._chunks is None:
            # The first chunk is where DATA's command stage is.
            reply = await self.fault_for("data", (envelope.mail_from or "", *envelope.rcpt_tos))
            if reply is not MISSING:
                self._set_post_data_state()
                await self._send_fault(reply)
                return
            self._chunks = bytearray()
            self._chunks_too_big = False
        limit = self.data_size_limit
        if not self._chunks_too_big:
            self._chunks += chunk
            if limit and len(self._chunks) > limit:
                self._chunks_too_big = True
                self._chunks = bytearray()
        if not last:
            await self.push(f"250 2.0.0 {len(chunk)} octets received")
            return
        content, too_big = bytes(self._chunks), self._chunks_too_big
        if too_big:
            self._set_post_data_state()
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        envelope.content = envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


class FakeHandler:
    """The aiosmtpd handler: faults at ehlo, auth, mail, rcpt and message; capture.

    Every hook asks ``server.fault_for`` first and hands back any reply it gets;
    ``MISSING`` lets aiosmtpd answer as it normally would.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def handle_HELO(
        self, server: FakeSMTPProtocol, session: Session, envelope: Envelope, hostname: str
    ) -> FaultReply:
        return await server.fault_for("ehlo")

    async def handle_EHLO(
        self,
        server: FakeSMTPProtocol,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        reply = await server.fault_for("ehlo")
        if reply is not MISSING:
            # EHLO's hook answers with the reply lines, none when dropped.
            return [reply] if reply else []
        session.host_name = hostname
        if self.state.pipelining:
            # aiosmtpd reads and answers one command at a time from its stream, so a
            # client's pipelined batch is answered in order (RFC 2920); it just does
            # not say so.
            responses.insert(len(responses) - 1, "250-PIPELINING")
        if self.state.chunking:
            responses.insert(len(responses) - 1, "250-CHUNKING")
        return responses

    async def handle_AUTH(
        self, server: FakeSMTPProtocol, session: Session, envelope: Envelope, args: list[str]
    ) -> FaultReply:
        return await server.fault_for("auth")

    async def handle_MAIL(
        self,
        server: FakeSMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> FaultReply:
        reply = await server.fault_for("mail", (address,))
        if reply is not MISSING:
            return reply
        state = self.state
        if (
            state.max_per_connection is not None
            and server.messages_accepted >= state.max_per_connection
        ):
            server.close_after_reply()
            return str(replies.TOO_MANY_MESSAGES)
        if state.rate_limit is not None and not state.rate_limit.take():
            if state.rate_limit_reply.closes:
                server.close_after_reply()
            return str(state.rate_limit_reply)
        return MISSING

    async def handle_RCPT(
        self,
        server: FakeSMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> FaultReply:
        reply = await server.fault_for("rcpt", (address,))
        if reply is not MISSING:
            return reply
        greylist = self.state.greylist
        if greylist is not None and not greylist.allows(envelope.mail_from or "", address):
            return str(replies.GREYLISTED)
        return MISSING

    async def handle_DATA(
        self, server: FakeSMTPProtocol, session: Session, envelope: Envelope
    ) -> str:
        mail_from: str = envelope.mail_from or ""
        rcpt_tos: list[str] = envelope.rcpt_tos
        rule = server.fire("message", (mail_from, *rcpt_tos), rcpt_tos)
        reply = await server.act(rule)
        if reply is not MISSING and (not reply or int(reply[:3]) >= 400):
            # Refused or dropped: the message was not accepted, so not kept.
            return reply
        content = envelope.original_content or b""
        message_id = self._keep(server, session, mail_from, rcpt_tos, content)
        if rule is not None and rule.action == "bounce":
            # As a real relay does: accept now, bounce once the client has its 250.
            bounce = functools.partial(
                self.state.bouncer.bounce,
                rule,
                mail_from,
                list(rcpt_tos),
                content,
                datetime.now(UTC),
            )
            server.after_reply(bounce)
        if reply is MISSING:
            return f"{replies.QUEUED.code} {replies.QUEUED.text % message_id}"
        # A fault's 2xx or 3xx reply: kept, and answered with the rule's own text.
        return reply

    def _keep(
        self,
        server: FakeSMTPProtocol,
        session: Session,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes | None,
    ) -> str:
        """Count an accepted message and store it (unless blackholed); returns its id."""
        state = self.state
        state.received += 1
        server.messages_accepted += 1
        if state.blackhole:
            return state.store.next_id()
        raw = content or b""
        # session.auth_data, not the deprecated login_data, which warns.
        auth_data = session.auth_data
        auth_user = (
            auth_data.login.decode("utf-8", "replace")
            if isinstance(auth_data, LoginPassword)
            else None
        )
        tls = server.uses_tls
        return state.store.add(
            lambda new_id: CapturedMessage(
                new_id, mail_from, list(rcpt_tos), raw, tls=tls, auth_user=auth_user
            )
        ).id

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client refused our certificate or hung up during the handshake:
            # its decision, not a bug in the server (e.g. a client that verifies
            # certificates meeting our self-signed one).
            log.info("fakesmtp TLS handshake failed: %r", error.__cause__)
            return str(replies.TLS_FAILED)
        # Surfaced when the server stops, so a bug here fails the test that hit it.
        log.error("fakesmtp handler error: %r", error)
        self.state.record_error(error)
        return str(replies.INTERNAL_ERROR)


def make_authenticator(
    state: ServerState,
) -> Callable[[Any, Session, Envelope, str, Any], AuthResult]:
    """Check AUTH PLAIN/LOGIN against ``state.auth``; without one, accept anyone (as Mailpit)."""

    def authenticate(
        server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if state.auth is not None:
            user, password = state.auth
            ok_user = hmac.compare_digest(auth_data.login, user.encode("utf-8"))
            ok_password = hmac.compare_digest(auth_data.password, password.encode("utf-8"))
            if not (ok_user and ok_password):
                return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data)

    return authenticate


def make_protocol_factory(
    state: ServerState,
    loop: asyncio.AbstractEventLoop,
    *,
    starttls_context: ssl.SSLContext | None,
    require_tls: bool,
    max_size: int | None,
    smtputf8: bool = True,
) -> Callable[[], FakeSMTPProtocol]:
    handler = FakeHandler(state)
    authenticator = make_authenticator(state)

    def factory() -> FakeSMTPProtocol:
        return FakeSMTPProtocol(
            state,
            handler,
            data_size_limit=max_size,
            enable_SMTPUTF8=smtputf8,
            hostname=HOSTNAME,
            ident="ESMTP ready",
            tls_context=starttls_context,
            require_starttls=require_tls and starttls_context is not None,
            auth_required=state.auth is not None,
            authenticator=authenticator,
            loop=loop,
        )

    return factory
