"""Webhooks: every stored event POSTed to WEBHOOK_URL, signed as the Standard
Webhooks specification says, at least once.

The events table is the outbox (service/db/events.py): a dispatcher claims pending
events under a lease, as delivery threads claim messages, so that with several
instances each event goes out from one at a time, and a crash leaves it pending
for the next claim. The dispatcher runs in a thread of its own with its own event
loop and a bounded HTTP connection pool, so a receiver that is slow or down
holds none of the request handlers' or delivery threads' time.

Backoff is per receiver, not per event: after a failure the receiver is left
alone for a growing, jittered wait (about 1 s doubling up to WEBHOOK_RETRY_MAX),
then probed with one event; the first 2xx ends the backoff, and what waited goes
out at once, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
from standardwebhooks import Webhook

from service.errors import DatabaseUnavailable
from service.types import PendingEvent

if TYPE_CHECKING:
    from service.config import Settings
    from service.db import Outbox
    from service.metrics import Metrics

__all__ = ["ReceiverBackoff", "WebhookDispatcher", "event_body", "webhook_id"]

log = logging.getLogger("service.webhooks")

# Requests in flight to the receiver at once, and events claimed per round.
CONCURRENCY = 8
BATCH = 64
# A receiver's answer is read up to this much, then the connection is dropped.
MAX_RESPONSE_BYTES = 64 * 1024
# Pending events are looked for this often when there is nothing to do.
IDLE_POLL_SECONDS = 0.25

# The message's status as of each event.
_STATUS = {
    "message.sent": "sent",
    "message.deferred": "queued",
    "message.failed": "failed",
    "message.bounced": "bounced",
    "message.cancelled": "cancelled",
}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_id(event: PendingEvent) -> str:
    """Stable across retries, unique across databases' reuse of event numbers."""
    return f"evt_{event.record_id}_{event.id}"


def event_body(event: PendingEvent) -> str:
    """The JSON body, as the contract shows it."""
    return json.dumps(
        {
            "type": event.type,
            "timestamp": _iso(event.at),
            "data": {
                "id": event.record_id,
                "message_id": event.message_id,
                "status": _STATUS.get(event.type, "sent"),
                "to": event.to,
                "subject": event.subject,
                "tags": event.tags,
                "metadata": event.metadata,
                "attempts": event.attempts,
                "code": event.code,
                "detail": event.detail,
                "recipient": event.recipient,
            },
        },
        separators=(",", ":"),
    )


class ReceiverBackoff:
    """When the receiver may be tried next, from its recent failures."""

    def __init__(
        self,
        retry_max: float,
        *,
        base: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._retry_max = retry_max
        self._base = base
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not a secret
        self.failures = 0
        self._next_try = 0.0

    def failed(self) -> float:
        """One more failure; the wait before the next try (between half and all of
        min(WEBHOOK_RETRY_MAX, base * 2**(failures-1)))."""
        self.failures += 1
        ceiling = min(self._retry_max, self._base * 2 ** min(self.failures - 1, 30))
        wait: float = ceiling * (0.5 + self._rng.random() / 2)
        self._next_try = self._clock() + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self._next_try = 0.0

    def wait(self) -> float:
        """Seconds until the receiver may be tried (0: now)."""
        return max(0.0, self._next_try - self._clock())


class WebhookDispatcher:
    """Claims pending events and POSTs them; start() and stop() from the lifespan."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        metrics: Metrics,
    ) -> None:
        if settings.webhook_url is None or settings.webhook_secret is None:
            raise ValueError("a WebhookDispatcher needs WEBHOOK_URL and WEBHOOK_SECRET")
        self._url = str(settings.webhook_url)
        self._signer = Webhook(settings.webhook_secret.get_secret_value())
        self._timeout = settings.webhook_timeout
        self._max_age = settings.webhook_max_age
        self._owner = settings.instance_name
        # Long enough that a claim outlives a whole round of slow calls.
        self._lease = settings.webhook_timeout * (BATCH // CONCURRENCY + 2)
        self._outbox = outbox
        self._metrics = metrics
        self.backoff = ReceiverBackoff(settings.webhook_retry_max)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        taken = self._outbox.take_back_event_claims(self._owner)
        if taken:
            log.info("took back %d webhook event claim(s) of the previous process", taken)
        self._thread = threading.Thread(target=self._main, name="webhooks", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; calls in flight get until `timeout` to finish and be
        recorded. Past it the thread is left to end with the process: the events it
        held stay pending under its claim, which the next start under the same
        INSTANCE_ID takes back at once (other instances when the lease runs out)."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready.set()
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            limits=limits,
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,
        ) as client:
            next_drop = 0.0
            while not self._stopping.is_set():
                if time.monotonic() >= next_drop:
                    next_drop = time.monotonic() + 60.0
                    await self._drop_old()
                wait = self.backoff.wait()
                if wait > 0:
                    await self._pause(wait)
                    continue
                try:
                    sent = await self._round(client)
                except Exception:
                    # A bug must not end webhooks for the life of the process: the
                    # claims run out and are taken again.
                    log.exception("webhooks: unexpected error; going on")
                    sent = 0
                if not sent:
                    await self._pause(IDLE_POLL_SECONDS)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if stop() is called meanwhile."""
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drop_old(self) -> None:
        try:
            dropped = self._outbox.drop_old_events(time.time() - self._max_age)
        except DatabaseUnavailable as exc:
            log.warning("webhooks: could not drop old events: %s", exc)
            return
        self._metrics.webhook_events.labels("dropped").inc(dropped)

    async def _round(self, client: httpx.AsyncClient) -> int:
        """One claim and its calls; the number of events tried."""
        # While the receiver is failing, one event probes it.
        limit = 1 if self.backoff.failures else BATCH
        try:
            if not self._outbox.any_pending_event():
                return 0
            events = self._outbox.claim_events(self._owner, limit, self._lease)
        except DatabaseUnavailable as exc:
            log.warning("webhooks: could not claim events: %s", exc)
            return 0
        if not events:
            return 0
        slots = asyncio.Semaphore(CONCURRENCY)
        receiver_failed = asyncio.Event()

        async def send(event: PendingEvent) -> bool | None:
            async with slots:
                # Once the receiver failed in this round, the rest wait for it to
                # come back rather than each failing on its own.
                if receiver_failed.is_set() or self._stopping_now():
                    return None
                ok = await self._post(client, event)
                if not ok:
                    receiver_failed.set()
                return ok

        results = await asyncio.gather(*(send(e) for e in events))
        delivered = [e.id for e, ok in zip(events, results, strict=True) if ok]
        failed = [e.id for e, ok in zip(events, results, strict=True) if ok is False]
        untried = [e.id for e, ok in zip(events, results, strict=True) if ok is None]
        self._settle(delivered, failed, untried)
        if failed:
            wait = self.backoff.failed()
            log.warning(
                "webhooks: receiver failed; %d event(s) wait, next try in %.1fs",
                len(failed) + len(untried),
                wait,
            )
        elif delivered:
            if self.backoff.failures:
                log.info("webhooks: receiver answers again; sending what waited")
            self.backoff.succeeded()
        return len(events)

    def _stopping_now(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def _settle(
        self, delivered: Sequence[int], failed: Sequence[int], untried: Sequence[int]
    ) -> None:
        try:
            self._outbox.events_delivered(delivered)
            self._outbox.release_events(failed, self._owner)
            self._outbox.release_events(untried, self._owner, tried=False)
        except DatabaseUnavailable as exc:
            # The claims' lease runs out and the events are sent again: at least once.
            log.warning("webhooks: could not record the calls' results: %s", exc)
        self._metrics.webhook_events.labels("delivered").inc(len(delivered))
        self._metrics.webhook_events.labels("failed").inc(len(failed))

    async def _post(self, client: httpx.AsyncClient, event: PendingEvent) -> bool:
        body = event_body(event)
        now = datetime.now(UTC)
        msg_id = webhook_id(event)
        headers = {
            "content-type": "application/json",
            "user-agent": "mail-service-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, now, body),
        }
        started = time.monotonic()
        status: int | None = None
        try:
            # One deadline over the whole call: a receiver that drips its answer a
            # byte at a time does not hold the slot past WEBHOOK_TIMEOUT.
            async with asyncio.timeout(self._timeout):
                async with client.stream(
                    "POST", self._url, content=body.encode(), headers=headers
                ) as response:
                    status = response.status_code
                    await _read_bounded(response)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.debug("webhooks: %s for %s: %r", self._url, msg_id, exc)
        finally:
            self._metrics.webhook_seconds.observe(time.monotonic() - started)
        return status is not None and 200 <= status <= 299


async def _read_bounded(response: httpx.Response) -> None:
    """Read and drop the body (so the connection can be reused), up to a bound."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen > MAX_RESPONSE_BYTES:
            return


def pending_gauge(outbox: Outbox) -> Callable[[], float]:
    """Events waiting for the receiver, read when /metrics is scraped."""

    def count() -> float:
        try:
            return float(outbox.count_pending_events())
        except DatabaseUnavailable:
            return float("nan")

    return count
