"""Bouncer: sends the DSNs that ``bounce`` fault rules call for, off the SMTP session's path.

The SMTP exchange with the bounce relay is blocking smtplib code, so it runs in
the event loop's default executor; the session that accepted the message never
waits for it. The counters and the set of DSNs in flight change on the loop
thread only (the executor's result comes back through a done callback there).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import smtplib
from collections.abc import Callable, Sequence
from datetime import datetime

from fakesmtp.dsn import build_dsn, send_dsn
from fakesmtp.faults import FaultRule

log = logging.getLogger("fakesmtp")

#: Seconds for each step of the exchange with the relay (connect, each command).
SEND_TIMEOUT = 5.0

# What a relay that refuses, hangs up or cannot be reached raises; anything else
# is a bug in fakesmtp.
_DELIVERY_ERRORS = (smtplib.SMTPException, OSError, UnicodeError)

# aiosmtpd records ``MAIL FROM:<>`` as "<>".
_NULL_SENDERS = ("", "<>")


class Bouncer:
    """One server's bounces: ``relay`` is the SMTP server DSNs go through (None: nowhere).

    ``on_error`` receives an unexpected exception from building or sending a
    DSN, so that the server re-raises it when it stops.
    """

    def __init__(
        self,
        relay: tuple[str, int] | None,
        hostname: str,
        on_error: Callable[[BaseException], None],
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.relay = relay
        self.hostname = hostname
        self.timeout = timeout
        self._on_error = on_error
        self.sent = 0
        self.failed = 0
        self._in_flight: set[asyncio.Future[None]] = set()

    def bounce(
        self,
        rule: FaultRule,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        arrival: datetime,
    ) -> None:
        """Start sending the DSN ``rule`` calls for; returns at once. Call on the loop."""
        if mail_from in _NULL_SENDERS:
            # A message from the null sender is itself a DSN (or asks for no
            # reply): answering it could make two relays bounce for ever.
            log.info("fakesmtp bounce rule fired for a message from <>: no DSN sent")
            return
        relay = self.relay
        if relay is None:
            self.failed += 1
            log.warning(
                "fakesmtp bounce rule fired without a bounce relay (--bounce-relay): "
                "no DSN sent to %s",
                mail_from,
            )
            return
        send = functools.partial(
            self._build_and_send, relay, rule, mail_from, rcpt_tos, content, arrival
        )
        future = asyncio.get_running_loop().run_in_executor(None, send)
        self._in_flight.add(future)
        future.add_done_callback(functools.partial(self._finished, mail_from, relay))

    def _build_and_send(
        self,
        relay: tuple[str, int],
        rule: FaultRule,
        mail_from: str,
        rcpt_tos: Sequence[str],
        content: bytes,
        arrival: datetime,
    ) -> None:
        # In an executor thread: parsing the original and the relay's round trips
        # stay off the event loop.
        assert rule.code is not None
        dsn = build_dsn(
            reporting_mta=self.hostname,
            sender=mail_from,
            recipients=rule.bounced(rcpt_tos),
            code=rule.code,
            text=rule.text,
            original=content,
            arrival=arrival,
        )
        send_dsn(relay, mail_from, dsn, self.timeout)

    def _finished(
        self, mail_from: str, relay: tuple[str, int], future: asyncio.Future[None]
    ) -> None:
        self._in_flight.discard(future)
        error = None if future.cancelled() else future.exception()
        if error is None and not future.cancelled():
            self.sent += 1
            return
        self.failed += 1
        if error is not None and not isinstance(error, _DELIVERY_ERRORS):
            log.error("fakesmtp bounce error: %r", error)
            self._on_error(error)
            return
        log.warning(
            "fakesmtp could not send a DSN to %s through %s:%d: %r",
            mail_from,
            relay[0],
            relay[1],
            error,
        )

    async def drain(self) -> None:
        """Wait for the DSNs still being sent (the server is stopping)."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
