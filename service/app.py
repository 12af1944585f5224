"""The app factory and its lifespan.

`create_app(settings)` builds everything; nothing happens at import. The lifespan
takes the InstanceLock (unless main.py already holds it), opens the database,
starts the delivery worker, the group committer and the sync connection pool,
holds them in one `Services` object for the endpoints
(service/api/deps.py reads it), and stops them on exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import db, mailer
from service.api.accept import SenderPolicy
from service.api.deps import has_valid_key
from service.api.docs import add_docs
from service.api.errors import install_error_handlers
from service.api.middleware import BodySizeLimit, RequestMetrics
from service.api.offload import SMTP_REQUEST_THREADS
from service.api.ratelimit import RateLimiter
from service.api.relay import RelayFeatures
from service.api.routes import add_routes
from service.api.services import Services
from service.bounces.listener import BounceListener
from service.config import Settings
from service.group_commit import make_committer
from service.instance import InstanceLock
from service.metrics import Metrics
from service.queue_worker import MailQueueWorker
from service.retry import RetryPolicy
from service.types import SenderFactory
from service.webhooks import WebhookDispatcher, pending_gauge

__all__ = ["GracePeriod", "create_app"]

logger = logging.getLogger(__name__)


class GracePeriod:
    """SHUTDOWN_GRACE_SECONDS, counted from the signal (main.py calls start()), so that
    the HTTP drain and the deliveries in flight share one period."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started: float | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = time.monotonic()

    def left(self) -> float:
        """What is left since the signal; the whole period when the app is stopped
        some other way (tests)."""
        if self._started is None:
            return self.seconds
        return max(0.0, self.seconds - (time.monotonic() - self._started))


def create_app(
    settings: Settings,
    *,
    sender_factory: SenderFactory | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    grace: GracePeriod | None = None,
    instance_lock: InstanceLock | None = None,
) -> FastAPI:
    """Build the app. `sender_factory` makes the senders of the worker and of the
    sync path's pool (SMTPConnections by default; a test double in tests);
    `clock` drives the rate limiter; `sleep` is the sync path's backoff wait;
    `instance_lock`, when the caller already holds it (main.py, to refuse a second
    process with one line before uvicorn starts)."""
    connect = sender_factory or mailer.connection_factory(settings)
    grace = grace or GracePeriod(settings.shutdown_grace_seconds)
    metrics = Metrics()
    # Built here, not in the lifespan: a bad ALLOWED_SENDERS fails create_app at once.
    policy = SenderPolicy(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_lock = None
        if instance_lock is None:
            own_lock = InstanceLock.acquire(settings.database_url, settings.instance_name)
        engine = db.make_engine(settings)
        try:
            outbox = db.Outbox(
                engine,
                lease_seconds=settings.lease_seconds,
                instance=settings.instance_name,
                webhooks=settings.webhook_url is not None,
            )
            if settings.migrate_on_start:
                outbox.create_schema()
            services = _services(settings, metrics, policy, outbox, connect, clock, sleep)
            app.state.services = services
            webhooks = _webhooks(settings, outbox, metrics)
            bounces = _bounce_listener(settings, outbox, metrics)
            if bounces is not None:
                await bounces.start()
            services.worker.start()
            services.committer.start()
            if webhooks is not None:
                await run_in_threadpool(webhooks.start)
            logger.info("accepting mail; relay %s:%s", settings.smtp_host, settings.smtp_port)
            try:
                yield
            finally:
                # The HTTP server has stopped taking requests: commit what is waiting,
                # then stop taking work, let deliveries in flight finish, leave the rest
                # queued; then the events those deliveries wrote get what time is left.
                if bounces is not None:
                    await bounces.stop()
                await services.committer.stop()
                await run_in_threadpool(services.worker.stop, grace.left())
                await run_in_threadpool(services.sync_sender.close)
                if webhooks is not None:
                    await run_in_threadpool(webhooks.stop, max(grace.left(), 1.0))
        finally:
            engine.dispose()
            if own_lock is not None:
                own_lock.release()

    app = FastAPI(
        title="mail-service",
        version="0.1.0",
        summary="Send email over SMTP, synchronously or through a durable outbox.",
        lifespan=lifespan,
        # FastAPI's own /docs and /redoc load their assets from a CDN; add_docs serves
        # the same pages with the assets from an installed package.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_message_bytes,
        per_path={"/send_batch": settings.batch_max_bytes},
    )
    if settings.metrics_enabled:
        # Outermost, so that 413s from the body limit are timed and counted too.
        app.add_middleware(RequestMetrics, metrics=metrics)
    install_error_handlers(app, settings, has_valid_key)
    add_routes(app, metrics=settings.metrics_enabled)
    add_docs(app)
    return app


def _services(
    settings: Settings,
    metrics: Metrics,
    policy: SenderPolicy,
    outbox: db.Outbox,
    connect: SenderFactory,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Services:
    worker = MailQueueWorker(outbox, settings, sender_factory=connect, metrics=metrics)
    sync_sender = mailer.ConnectionPool(connect)
    metrics.bind_gauges(
        queue_depth=lambda: worker.queue_depth,
        backlog=lambda: worker.backlog,
        oldest_queued_age=lambda: _oldest_queued_age(outbox),
        connections_open=lambda: worker.connections_open,
        concurrency_limit=lambda: worker.concurrency.limit,
    )
    rate = settings.rate_limit_per_second
    return Services(
        settings=settings,
        metrics=metrics,
        outbox=outbox,
        worker=worker,
        committer=make_committer(outbox),
        sync_sender=sync_sender,
        relay_features=RelayFeatures(sync_sender),
        smtp_slots=asyncio.Semaphore(SMTP_REQUEST_THREADS),
        rate_limiter=(
            RateLimiter(rate, settings.rate_limit_burst, clock) if rate is not None else None
        ),
        sender_policy=policy,
        retry=RetryPolicy.from_settings(settings),
        sleep=sleep,
    )


def _webhooks(settings: Settings, outbox: db.Outbox, metrics: Metrics) -> WebhookDispatcher | None:
    if settings.webhook_url is None:
        return None
    metrics.webhook_pending.set_function(pending_gauge(outbox))
    return WebhookDispatcher(settings, outbox, metrics)


def _bounce_listener(
    settings: Settings, outbox: db.Outbox, metrics: Metrics
) -> BounceListener | None:
    if settings.bounce_smtp_port is None or settings.bounce_address is None:
        return None
    return BounceListener(
        settings.bounce_smtp_host,
        settings.bounce_smtp_port,
        settings.bounce_address,
        outbox,
        metrics,
        max_message_bytes=settings.max_message_bytes,
    )


def _oldest_queued_age(outbox: db.Outbox) -> float | None:
    # A scrape while the database is away shows 0 rather than failing /metrics.
    try:
        return outbox.oldest_queued_age()
    except db.DatabaseUnavailable:
        return None
