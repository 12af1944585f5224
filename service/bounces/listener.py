"""The bounce listener: an SMTP server (aiosmtpd) in the service's event loop that
takes mail for BOUNCE_ADDRESS's VERP addresses and records what it reports.

Mail for any other address is refused at RCPT (550). Everything addressed to us
is accepted (250), whatever it holds: a report we cannot read, or one for a
record we do not have, is logged and counted, never answered with an error that
would make the sending MTA try again and again. Parsing and the database write
run in a worker thread, at most a few at a time, so a flood of bounces neither
blocks the event loop that serves the API nor grows without bound; sessions
over MAX_SESSIONS are told 421 (try again later), which bounds the memory the
reports being received can hold.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from service.bounces.parse import Bounce, parse_bounce
from service.bounces.verp import record_id_from_verp
from service.db.bounces import BouncedAddress
from service.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from service.db import Outbox
    from service.metrics import Metrics

__all__ = ["MAX_SESSIONS", "BounceListener", "bounced_addresses"]

log = logging.getLogger("service.bounces")

# Parses (and their writes) at once; the rest wait in aiosmtpd's sessions.
_WORKERS = 2
# A DSN may carry the whole original message back.
_OVERHEAD = 256 * 1024
_REPLY_CODE = re.compile(r"^\s*([245]\d\d)\b")
# Sessions at once; more are answered 421 (try later).
MAX_SESSIONS = 16
# A DSN goes to one envelope sender: more records than this in one message is not
# a bounce, and each costs a database write.
_MAX_RECIPIENTS = 100


def bounced_addresses(bounce: Bounce) -> list[BouncedAddress]:
    """The recipients a report says failed (a delay notice reports none)."""
    found = []
    for r in bounce.recipients:
        if r.action != "failed":
            continue
        diagnostic = r.diagnostic or ""
        match = _REPLY_CODE.match(diagnostic)
        detail = " ".join(part for part in (r.status, diagnostic) if part) or "bounced"
        found.append(
            BouncedAddress(
                recipient=r.recipient,
                code=int(match.group(1)) if match else None,
                detail=detail[:1000],
                permanent=r.permanent,
            )
        )
    return found


class _Handler:
    def __init__(self, bounce_address: str, outbox: Outbox, metrics: Metrics) -> None:
        self._bounce_address = bounce_address
        self._outbox = outbox
        self._metrics = metrics
        self._slots = asyncio.Semaphore(_WORKERS)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if record_id_from_verp(self._bounce_address, address) is None:
            return "550 5.1.1 Not a bounce address of this service"
        if len(envelope.rcpt_tos) >= _MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        ids = {record_id_from_verp(self._bounce_address, rcpt) for rcpt in envelope.rcpt_tos}
        async with self._slots:
            await asyncio.to_thread(self._record_all, sorted(i for i in ids if i), raw)
        return "250 OK"

    def _record_all(self, record_ids: list[str], raw: bytes) -> None:
        # Parsed once, whatever the number of records it names.
        bounce = parse_bounce(raw)
        bounced = bounced_addresses(bounce)
        for record_id in record_ids:
            self._record(record_id, bounce, bounced)

    def _record(self, record_id: str, bounce: Bounce, bounced: list[BouncedAddress]) -> None:
        if not bounced:
            delayed = any(r.action == "delayed" for r in bounce.recipients)
            result = "delayed" if delayed else "unrecognised"
            log.info("bounce for %s: %s (format %s)", record_id, result, bounce.format)
            self._metrics.bounces.labels(result).inc()
            return
        try:
            recorded = self._outbox.record_bounce(record_id, bounced)
        except DatabaseUnavailable as exc:
            # Accepted all the same: the sending MTA would retry, and a bounce lost
            # to a database outage costs less than a retry storm.
            log.warning("bounce for %s not recorded: %s", record_id, exc)
            self._metrics.bounces.labels("unrecorded").inc()
            return
        if recorded is None:
            result = "unknown"
        elif recorded == 0:
            # None of the reported addresses was the message's: a forged or
            # confused report, which must not suppress anyone.
            result = "foreign"
        else:
            result = "recorded"
        log.info(
            "bounce for %s: %s, %s",
            record_id,
            result,
            ", ".join(f"{b.recipient} ({b.detail})" for b in bounced),
        )
        self._metrics.bounces.labels(result).inc()


class _Sessions:
    """The listener's open sessions, against a cap: each may buffer a report up to
    MAX_MESSAGE_BYTES, so their number bounds the listener's memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0


class _BounceSMTP(SMTP):
    def __init__(self, handler: _Handler, sessions: _Sessions, **options: Any) -> None:
        super().__init__(handler, **options)
        self._sessions = sessions
        sessions.open += 1
        self._counted = True

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._sessions.open -= 1
        super().connection_lost(error)


class _TooBusy(asyncio.Protocol):
    """A session over the cap: told to come back later (an MTA retries a 421)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(b"421 4.3.2 Too many connections, try again later\r\n")
        transport.close()


class BounceListener:
    """start() and stop() from the lifespan, on its event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        bounce_address: str,
        outbox: Outbox,
        metrics: Metrics,
        *,
        max_message_bytes: int,
    ) -> None:
        self._host = host
        self._port = port
        self._handler = _Handler(bounce_address, outbox, metrics)
        self._limit = max_message_bytes + _OVERHEAD
        self._sessions = _Sessions(MAX_SESSIONS)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when BOUNCE_SMTP_PORT is 0)."""
        if self._server is None:
            raise RuntimeError("the bounce listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, self._host, self._port)
        log.info("bounce listener on %s:%d", self._host, self.port)

    def _session(self) -> asyncio.Protocol:
        if self._sessions.open >= self._sessions.cap:
            return _TooBusy()
        return _BounceSMTP(
            self._handler,
            self._sessions,
            data_size_limit=self._limit,
            hostname="mail-service-bounces",
            timeout=60,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
