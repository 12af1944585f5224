"""The HTTP API: app factory, endpoints, API-key auth, limits, idempotency, lifespan.

`create_app(settings)` builds everything; nothing happens at import. The lifespan
opens the database, starts the delivery worker and the sync connection pool, puts
them on `app.state`, and stops them on exit. Endpoints reach them through the
`Annotated` dependency aliases below.

The accept path of /send_async is deliberately lean (issue 5): validate, render once,
one INSERT committed together with the other requests waiting at that moment (group
commit, service/group_commit.py: on the event loop for SQLite, in a writer thread for
PostgreSQL), one enqueue of the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar, cast

from fastapi import Depends, FastAPI, Header, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import db, mailer
from service.config import Settings
from service.group_commit import Committer, make_committer
from service.ids import new_id
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.models import (
    ErrorResponse,
    HealthResponse,
    MessageStatus,
    RejectedRecipientModel,
    SendRequest,
    SendResponse,
    canonical_address,
    parse_address,
)
from service.queue_worker import MailQueueWorker, QueueFull, Sender, ShuttingDown

__all__ = ["BodySizeLimit", "RateLimiter", "create_app"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Seconds a client should wait after a 503 caused by the database (locked, full, gone).
DATABASE_RETRY_AFTER = 5
# After SIGTERM this instance takes no new work; another instance (or this one once
# restarted) will.
SHUTDOWN_RETRY_AFTER = 5
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"


# -- request latency, for /metrics --------------------------------------------------


class RequestMetrics:
    """Pure ASGI middleware: observe each request's latency by route template and status.

    The route template (`/messages/{message_id}`), never the raw path, labels the
    series, so ids and probes of unknown paths cannot grow the label set.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before responding

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - started
            )


# -- request body size, enforced while the body streams -----------------------------


class BodySizeLimit:
    """Pure ASGI middleware: 413 for a body over `limit` bytes without buffering it.

    A Content-Length over the limit is answered at once, before reading anything. A
    chunked body is counted as it is received and refused as soon as the count passes
    the limit, so memory stays flat whatever the client sends.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1  # the server rejects a malformed length before us
                if declared > self.limit:
                    await self._refuse(send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:  # pragma: no cover - endpoints read the body before answering
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the upload is not read: tell the client not to reuse
                    # the connection (servers close it anyway).
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body reader lets it
    through instead of turning it into a 400, and the exception handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over {limit} bytes")


# -- rate limiting -----------------------------------------------------------------


class RateLimiter:
    """A token bucket per API key (by fingerprint): `rate` tokens a second, `burst` at most.

    Buckets live in memory, one per configured key, so their number is bounded.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int | None:
        """Take one token; None when allowed, else the seconds to wait (>= 1)."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))


# -- what the lifespan builds --------------------------------------------------------


class SyncSender(Protocol):
    def send(self, message: mailer.RenderedMessage) -> mailer.SendResult: ...

    def offers(self, extension: str) -> bool: ...

    def close(self) -> None: ...


class _FactoryPool:
    """Idle senders from an injected factory, for the sync path when tests inject one."""

    def __init__(self, factory: Callable[[], Sender]) -> None:
        self._factory = factory
        self._idle: list[Sender] = []
        self._lock = threading.Lock()

    def send(self, message: mailer.RenderedMessage) -> mailer.SendResult:
        with self._lock:
            sender = self._idle.pop() if self._idle else None
        if sender is None:
            sender = self._factory()
        try:
            result = sender.send(message)
        except BaseException:
            sender.close()
            raise
        with self._lock:
            self._idle.append(sender)
        return result

    def offers(self, extension: str) -> bool:
        sender = self._factory()
        try:
            offers = getattr(sender, "offers", None)
            # A test double that cannot say is taken to offer everything.
            return True if offers is None else bool(offers(extension))
        finally:
            sender.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sender in idle:
            sender.close()


@dataclass(frozen=True, slots=True)
class Client:
    """The caller, identified by a fingerprint of its API key (never the key itself)."""

    fingerprint: str


@functools.cache  # only configured keys get here (after they matched): a bounded set
def key_fingerprint(key: str) -> str:
    """A short, stable, non-reversible name for an API key, for scopes and buckets."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def request_hash(request: SendRequest, endpoint: str) -> str:
    """sha256 of the endpoint and the canonical JSON of a validated request (sorted keys,
    no spaces). The endpoint is part of it: one key used on /send and then on
    /send_async is a different request (422), never a replay of the other's answer."""
    canonical = json.dumps(
        [endpoint, request.model_dump(mode="json", by_alias=True)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")


def validation_error(loc: tuple[str | int, ...], message: str, value: Any = None) -> Exception:
    """A 422 in exactly the shape FastAPI gives invalid bodies."""
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


# -- dependencies (read app.state, never a module global) ----------------------------

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="APIKey",
    description="One of the keys in API_KEY.",
)


def _authenticate(settings: Settings, presented: str | None) -> Client | None:
    if not presented:
        return None
    # Headers arrive as latin-1 text; compare the raw bytes against every key without
    # stopping at the first match, so timing reveals neither the key nor its position.
    raw = presented.encode("latin-1", "replace")
    matched: str | None = None
    for key in settings.api_keys:
        if hmac.compare_digest(raw, key.encode()):
            matched = key
    return None if matched is None else Client(key_fingerprint(matched))


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_outbox(request: Request) -> db.Outbox:
    outbox: db.Outbox = request.app.state.outbox
    return outbox


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
OutboxDep = Annotated[db.Outbox, Depends(get_outbox)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]
) -> Client:
    client = _authenticate(settings, key)
    if client is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid X-API-Key",
            headers={"WWW-Authenticate": "APIKey"},
        )
    return client


ClientDep = Annotated[Client, Depends(require_api_key)]


class RelayFeatures:
    """What the relay advertises, asked once and remembered for a while.

    A message whose address has a non-ASCII local part can only travel with
    SMTPUTF8. Asking the relay at request time turns "202, then failed" into a
    clear 422 at once. The answer is cached: relays do not change it often, and
    the accept path must not open a connection per request.
    """

    TTL_SECONDS = 300.0

    def __init__(self, sender: SyncSender, clock: Callable[[], float] = time.monotonic) -> None:
        self._sender = sender
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}

    def offers(self, extension: str) -> bool | None:
        """True or False; None when the relay cannot be reached (then we do not know)."""
        now = self._clock()
        cached = self._known.get(extension)
        if cached is not None and now - cached[1] < self.TTL_SECONDS:
            return cached[0]
        try:
            offered = self._sender.offers(extension)
        except mailer.DeliveryError:
            return None
        self._known[extension] = (offered, now)
        return offered


@dataclass(frozen=True, slots=True)
class SendContext:
    """What a send endpoint needs, gathered by one dependency.

    The accept path is the hot path: each FastAPI dependency costs a resolution step
    per request, so the send endpoints take this one object (authenticated and rate
    limited) instead of one dependency per piece of app state.
    """

    client: Client
    settings: Settings
    outbox: db.Outbox
    worker: MailQueueWorker
    sync_sender: SyncSender
    metrics: Metrics
    committer: Committer
    relay_features: RelayFeatures
    smtp_slots: asyncio.Semaphore


async def send_context(
    request: Request, key: Annotated[str | None, Security(api_key_header)]
) -> SendContext:
    state = request.app.state
    client = await require_api_key(state.settings, key)
    limiter: RateLimiter | None = state.rate_limiter
    if limiter is not None:
        wait = limiter.acquire(client.fingerprint)
        if wait is not None:
            state.metrics.rejected.labels("rate_limited").inc()
            raise HTTPException(
                status_code=429,
                detail="rate limit exceeded for this API key",
                headers={"Retry-After": str(wait)},
            )
    return SendContext(
        client,
        state.settings,
        state.outbox,
        state.worker,
        state.sync_sender,
        state.metrics,
        state.committer,
        state.relay_features,
        state.smtp_slots,
    )


SendContextDep = Annotated[SendContext, Depends(send_context)]
IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Repeat a send safely: the same key and body answer what the first "
        "answered and send nothing more.",
    ),
]


# -- checks that need settings ----------------------------------------------------


class SenderPolicy:
    """ALLOWED_SENDERS: exact addresses and @domains; MAIL_FROM is always allowed."""

    def __init__(self, settings: Settings) -> None:
        self.open = settings.allowed_senders is None
        self.addresses: set[str] = set()
        self.domains: set[str] = set()
        for entry in [*(settings.allowed_senders or []), settings.mail_from]:
            entry = entry.strip()
            if entry.startswith("@"):
                self.domains.add(canonical_address("x" + entry).split("@", 1)[1])
            else:
                self.addresses.add(canonical_address(parse_address(entry)[1]))

    def allows(self, address: str) -> bool:
        if self.open:
            return True
        canonical = canonical_address(parse_address(address)[1])
        return canonical in self.addresses or canonical.rsplit("@", 1)[1] in self.domains


def check_request(payload: SendRequest, settings: Settings, policy: SenderPolicy) -> None:
    if payload.recipient_count > settings.max_recipients:
        raise validation_error(
            ("body",),
            f"too many recipients: {payload.recipient_count} in to, cc and bcc together, "
            f"at most {settings.max_recipients} (MAX_RECIPIENTS)",
        )
    if payload.from_ is not None and not policy.allows(payload.from_):
        raise validation_error(
            ("body", "from"),
            "this sender is not allowed: use an address or domain listed in "
            "ALLOWED_SENDERS, or leave 'from' out to send as MAIL_FROM",
            payload.from_,
        )


# -- the app ----------------------------------------------------------------------

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key"},
}
SEND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {"model": ErrorResponse, "description": "Same Idempotency-Key still in progress"},
    413: {"model": ErrorResponse, "description": "Body or built message over MAX_MESSAGE_BYTES"},
    429: {"model": ErrorResponse, "description": "Over this key's rate limit; see Retry-After"},
    503: {
        "model": ErrorResponse,
        "description": "Queue full, database unavailable or shutting down; see Retry-After",
    },
}


def create_app(
    settings: Settings,
    *,
    smtp_sender_factory: Callable[[], Sender] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FastAPI:
    """Build the app. `smtp_sender_factory` replaces SMTPConnection (worker and sync path);
    `clock` drives the rate limiter; `sleep` is the sync path's backoff wait."""

    def make_sender() -> Sender:
        # SMTPConnection has Sender's two methods; Sender is a plain class, not a Protocol.
        return cast(Sender, mailer.SMTPConnection(settings))

    sender_factory = smtp_sender_factory or make_sender

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.make_engine(settings)
        try:
            outbox = db.Outbox(engine, lease_seconds=settings.lease_seconds)
            if settings.migrate_on_start:
                outbox.create_schema()
            worker = MailQueueWorker(
                outbox, settings, sender_factory=sender_factory, metrics=app.state.metrics
            )
            sync_sender: SyncSender = (
                _FactoryPool(smtp_sender_factory)
                if smtp_sender_factory is not None
                else mailer.ConnectionPool(settings)
            )
            committer = make_committer(outbox)
            app.state.outbox = outbox
            app.state.worker = worker
            app.state.committer = committer
            app.state.relay_features = RelayFeatures(sync_sender)
            app.state.smtp_slots = asyncio.Semaphore(SMTP_REQUEST_THREADS)
            app.state.sync_sender = sync_sender
            app.state.metrics.bind_gauges(
                queue_depth=lambda: worker.queue_depth,
                backlog=lambda: worker.backlog,
                oldest_queued_age=lambda: _oldest_queued_age(outbox),
            )
            worker.start()
            committer.start()
            logger.info("accepting mail; relay %s:%s", settings.smtp_host, settings.smtp_port)
            try:
                yield
            finally:
                # The HTTP server has stopped taking requests: commit what is waiting,
                # then stop taking work, let deliveries in flight finish, leave the rest
                # queued.
                await committer.stop()
                await run_in_threadpool(worker.stop, _grace_left(app, settings))
                await run_in_threadpool(sync_sender.close)
        finally:
            engine.dispose()

    app = FastAPI(
        title="mail-service",
        version="0.1.0",
        summary="Send email over SMTP, synchronously or through a durable outbox.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.rate_limiter = (
        RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst, clock)
        if settings.rate_limit_per_second is not None
        else None
    )
    app.state.sender_policy = SenderPolicy(settings)
    app.add_middleware(BodySizeLimit, limit=settings.max_message_bytes)
    if settings.metrics_enabled:
        # Outermost, so that 413s from the body limit are timed and counted too.
        app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    _install_error_handlers(app, settings)
    _add_routes(app, settings, sleep)
    return app


# At most this many threads doing SMTP work for requests at once (as many as the
# thread pool it replaces: anyio's default); further requests wait their turn.
SMTP_REQUEST_THREADS = 40


async def run_in_daemon_thread(slots: asyncio.Semaphore, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking SMTP work in a daemon thread and await its result.

    Not the thread pool: the interpreter waits for its (non-daemon) workers at
    exit, so one /send stuck on a silent relay would hold a SIGTERM'd process
    for SMTP_TIMEOUT and every retry after it. A daemon thread is abandoned when
    the request is cancelled at the end of the grace period; the message's row
    stays in `sending` and its lease turns it into "interrupted".
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting request
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    async with slots:
        threading.Thread(target=run, name="smtp-request", daemon=True).start()
        return await future


def _grace_left(app: FastAPI, settings: Settings) -> float:
    """What is left of SHUTDOWN_GRACE_SECONDS since the signal (main.py notes when it
    came); the whole period when the app is stopped some other way (tests)."""
    started: float | None = getattr(app.state, "shutdown_started", None)
    grace = settings.shutdown_grace_seconds
    if started is None:
        return grace
    return max(0.0, grace - (time.monotonic() - started))


async def check_relay_can_carry(
    rendered: mailer.RenderedMessage, relay: RelayFeatures, slots: asyncio.Semaphore
) -> None:
    """422 for a message the relay is known unable to carry (nothing stored or sent)."""
    if not rendered.smtputf8:
        return
    if await run_in_daemon_thread(slots, relay.offers, "smtputf8") is False:
        raise validation_error(
            ("body",),
            "an address has a non-ASCII local part (before the @), which needs SMTPUTF8, "
            "and the relay does not offer it; use an ASCII address",
        )


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    protected = {"/send", "/send_async"}
    default_handler = app.exception_handlers[RequestValidationError]

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        # FastAPI parses JSON before it runs dependencies, so a malformed body would
        # answer 422 before the key is checked. A caller without a valid key learns
        # nothing about our validation: 401 first.
        path = request.url.path
        needs_key = path in protected or path.startswith("/messages/")
        if needs_key and _authenticate(settings, request.headers.get("x-api-key")) is None:
            return JSONResponse(
                {"detail": "missing or invalid X-API-Key"},
                status_code=401,
                headers={"WWW-Authenticate": "APIKey"},
            )
        handler: Callable[[Request, Exception], Awaitable[Response]] = default_handler  # type: ignore[assignment]
        return await handler(request, exc)

    app.add_exception_handler(RequestValidationError, on_validation_error)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # FastAPI answers a body it cannot decode (not UTF-8) with a 400 raised from the
        # decoding error. For us that is an invalid body like any other: 401 without a
        # valid key, else a 422 in the usual shape.
        if (
            isinstance(exc, StarletteHTTPException)
            and exc.status_code == 400
            and isinstance(exc.__cause__, ValueError)
            and request.url.path in protected
        ):
            error = validation_error(("body",), "the body is not valid JSON text (UTF-8)")
            return await on_validation_error(request, error)
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]

    app.add_exception_handler(StarletteHTTPException, on_http_error)


def _replay(record: db.IdempotencyRecord, hashed: str) -> Response:
    if record.request_hash != hashed:
        raise validation_error(
            ("header", "Idempotency-Key"),
            "this Idempotency-Key was used with a different request body",
        )
    if record.response_code is None or record.response_body is None:
        raise HTTPException(
            status_code=409,
            detail="a request with this Idempotency-Key is still in progress",
        )
    return Response(
        content=record.response_body,
        status_code=record.response_code,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def _add_routes(app: FastAPI, settings: Settings, sleep: Callable[[float], None]) -> None:
    @app.get("/health", response_model=HealthResponse, tags=["service"])
    async def health() -> HealthResponse:
        """Liveness: the process answers HTTP."""
        return HealthResponse(status="ok")

    async def accept(
        endpoint: str,
        payload: SendRequest,
        context: SendContext,
        idempotency_key: str | None,
        record_id: str,
    ) -> tuple[mailer.RenderedMessage | Response, str | None, str | None]:
        """Checks shared by both send endpoints; returns the message rendered for
        `record_id` (or a replayed answer) with the idempotency scope and request hash."""
        client, outbox = context.client, context.outbox
        check_request(payload, settings, app.state.sender_policy)
        scope = hashed = None
        if idempotency_key is not None:
            scope = f"{client.fingerprint}:{idempotency_key}"
            hashed = request_hash(payload, endpoint)
            record = await _find_idempotent(outbox, scope, settings)
            if record is not None:
                return _replay(record, hashed), scope, hashed
        try:
            rendered = mailer.render_message(
                payload, default_from=settings.mail_from, record_id=record_id
            )
        except (ValueError, UnicodeError) as exc:
            raise validation_error(("body",), f"the message cannot be built: {exc}") from None
        if len(rendered.data) > settings.max_message_bytes:
            raise HTTPException(
                status_code=413,
                detail=f"the built message is {len(rendered.data)} bytes, over "
                f"{settings.max_message_bytes} (MAX_MESSAGE_BYTES)",
            )
        await check_relay_can_carry(rendered, context.relay_features, context.smtp_slots)
        return rendered, scope, hashed

    @app.post(
        "/send_async",
        status_code=202,
        response_model=SendResponse,
        responses=SEND_RESPONSES,
        tags=["mail"],
    )
    async def send_async(
        payload: SendRequest,
        context: SendContextDep,
        idempotency_key: IdempotencyKeyDep = None,
    ) -> Response:
        """Queue a message: answered 202 only once it is committed to the database."""
        outbox, worker, metrics = context.outbox, context.worker, context.metrics
        message_id = new_id()
        rendered, scope, hashed = await accept(
            "send_async", payload, context, idempotency_key, message_id
        )
        if isinstance(rendered, Response):
            return rendered
        try:
            worker.reserve()
        except QueueFull as exc:
            metrics.rejected.labels("queue_full").inc()
            raise HTTPException(
                status_code=503,
                detail="the queue is full; retry later",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        except ShuttingDown:
            metrics.rejected.labels("shutting_down").inc()
            raise HTTPException(
                status_code=503,
                detail="shutting down; retry later",
                headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER)},
            ) from None
        answer = SendResponse(
            ok=True, id=message_id, status="queued", message_id=rendered.message_id
        ).model_dump_json()
        committed = False

        def hand_to_workers() -> None:
            # Right after the commit (see group_commit.py).
            nonlocal committed
            committed = True
            worker.enqueue(message_id)

        try:
            await context.committer.insert(
                db.NewMessage(
                    id=message_id,
                    mode="async",
                    rendered=rendered,
                    to=payload.to,
                    subject=payload.subject,
                    idempotency_scope=scope,
                    request_hash=hashed,
                    response_code=202,
                    response_body=answer,
                ),
                on_commit=hand_to_workers,
            )
        except db.IdempotencyKeyTaken:
            worker.release()
            return await _replay_after_race(outbox, scope, hashed, settings)
        except db.DatabaseUnavailable:
            worker.release()
            metrics.rejected.labels("database_unavailable").inc()
            logger.warning("database unavailable; answered 503")
            raise _database_unavailable() from None
        except BaseException:
            # Cancelled (client gone, shutdown). After the commit the message is
            # queued and keeps its slot. Before it, the insert may still be committed
            # later (it is in the writer's queue): hand_to_workers then queues it all
            # the same, and the scheduler's backlog re-sync corrects the count.
            if not committed:
                worker.release()
            raise
        metrics.accepted.labels("send_async").inc()
        logger.debug("queued %s", message_id, extra={"message_id": rendered.message_id})
        return Response(content=answer, status_code=202, media_type="application/json")

    @app.post(
        "/send",
        response_model=SendResponse,
        responses={
            **SEND_RESPONSES,
            500: {"model": SendResponse, "description": "The relay refused or failed"},
            503: {"model": ErrorResponse, "description": "Database unavailable"},
        },
        tags=["mail"],
    )
    async def send(
        payload: SendRequest,
        context: SendContextDep,
        idempotency_key: IdempotencyKeyDep = None,
    ) -> Response:
        """Send now and answer with the outcome: 200 sent, 500 failed (retries included)."""
        outbox, sync_sender, metrics = context.outbox, context.sync_sender, context.metrics
        message_id = new_id()
        rendered, scope, hashed = await accept(
            "send", payload, context, idempotency_key, message_id
        )
        if isinstance(rendered, Response):
            return rendered
        try:
            # Through the committer like /send_async: batched with the other inserts,
            # and never a database round trip on the event loop with PostgreSQL.
            await context.committer.insert(
                db.NewMessage(
                    id=message_id,
                    mode="sync",
                    rendered=rendered,
                    to=payload.to,
                    subject=payload.subject,
                    idempotency_scope=scope,
                    request_hash=hashed,
                )
            )
        except db.IdempotencyKeyTaken:
            return await _replay_after_race(outbox, scope, hashed, settings)
        except db.DatabaseUnavailable:
            metrics.rejected.labels("database_unavailable").inc()
            logger.warning("database unavailable; answered 503")
            raise _database_unavailable() from None
        metrics.accepted.labels("send").inc()
        code, answer = await run_in_daemon_thread(
            context.smtp_slots,
            _deliver_sync,
            settings,
            outbox,
            sync_sender,
            metrics,
            sleep,
            message_id,
            rendered,
        )
        return Response(content=answer, status_code=code, media_type="application/json")

    @app.get(
        "/messages/{message_id}",
        response_model=MessageStatus,
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorResponse, "description": "No message with this id"},
            503: {"model": ErrorResponse, "description": "Database unavailable"},
        },
        tags=["mail"],
    )
    async def get_message(message_id: str, client: ClientDep, outbox: OutboxDep) -> MessageStatus:
        """A message's record: status, attempts, last error, times. Never its body."""
        try:
            record = await database_call(outbox, outbox.get, message_id)
        except db.DatabaseUnavailable:
            raise _database_unavailable() from None
        if record is None:
            raise HTTPException(status_code=404, detail="no message with this id")
        return MessageStatus(
            id=record.id,
            status=record.status,
            attempts=record.attempts,
            last_error=record.last_error,
            created_at=iso(record.created_at) or "",
            updated_at=iso(record.updated_at) or "",
            sent_at=iso(record.sent_at),
            message_id=record.message_id,
            to=record.to,
            subject=record.subject,
            rejected=[_rejected(item) for item in record.rejected],
        )

    if settings.metrics_enabled:

        @app.get(
            "/metrics",
            tags=["service"],
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        )
        async def metrics_endpoint(metrics: MetricsDep, outbox: OutboxDep) -> Response:
            """Prometheus text format (see service/metrics.py for the series)."""
            # Rendering reads the oldest queued message's age from the database.
            text = await database_call(outbox, metrics.render)
            return Response(content=text, media_type=CONTENT_TYPE_LATEST)


def _oldest_queued_age(outbox: db.Outbox) -> float | None:
    # A scrape while the database is away shows 0 rather than failing /metrics.
    try:
        return outbox.oldest_queued_age()
    except db.DatabaseUnavailable:
        return None


async def database_call(outbox: db.Outbox, fn: Callable[..., T], *args: Any) -> T:
    """Run a database call for a request: inline with SQLite, in the thread pool with
    a server database.

    A local SQLite read takes microseconds, less than a hop to a thread. A server
    database costs a network round trip, and an unreachable one CONNECT_TIMEOUT
    seconds: on the event loop either would stop every other request.
    """
    if outbox.is_sqlite:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


async def _find_idempotent(
    outbox: db.Outbox, scope: str, settings: Settings
) -> db.IdempotencyRecord | None:
    try:
        # Keys older than the TTL count as absent even before purge() removes them.
        not_before = time.time() - settings.idempotency_ttl_seconds
        return await database_call(
            outbox, functools.partial(outbox.find_idempotent, scope, not_before=not_before)
        )
    except db.DatabaseUnavailable:
        raise _database_unavailable() from None


async def _replay_after_race(
    outbox: db.Outbox, scope: str | None, hashed: str | None, settings: Settings
) -> Response:
    """A concurrent request with the same key committed first: answer as a repeat of it."""
    if scope is None or hashed is None:  # only keyed inserts can collide
        raise RuntimeError("IdempotencyKeyTaken for a request without an Idempotency-Key")
    record = await _find_idempotent(outbox, scope, settings)
    if record is None:  # purged in between: vanishingly rare, and safe to retry
        raise HTTPException(
            status_code=409, detail="a request with this Idempotency-Key is still in progress"
        )
    return _replay(record, hashed)


def _database_unavailable() -> HTTPException:
    return HTTPException(
        status_code=503,
        detail="the database is unavailable; nothing was stored, retry later",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def _rejected(item: mailer.RejectedRecipient) -> RejectedRecipientModel:
    return RejectedRecipientModel(recipient=item.recipient, code=item.code, message=item.message)


def _deliver_sync(
    settings: Settings,
    outbox: db.Outbox,
    sync_sender: SyncSender,
    metrics: Metrics,
    sleep: Callable[[float], None],
    message_id: str,
    rendered: mailer.RenderedMessage,
) -> tuple[int, str]:
    """Runs in a worker thread: send with inline retries, record every attempt and the
    answer (so an idempotent repeat can replay it). Returns (status code, JSON body)."""
    attempts = 0
    started = time.time()

    def on_attempt(number: int, error: mailer.DeliveryError | None) -> None:
        nonlocal attempts, started
        attempts = number
        final = error is None or not error.temporary or number > settings.smtp_max_retries
        outcome = "sent" if error is None else ("failed" if final else "retried")
        metrics.record_delivery(
            "sync", outcome, error.code if error else None, time.time() - started
        )
        if not final:
            # The last attempt is written by finish_sync together with the answer.
            outbox.record_attempt(
                db.Outcome(id=message_id, attempt=number, error=error, started_at=started)
            )
            started = time.time()

    error: mailer.DeliveryError | None = None
    rejected: list[mailer.RejectedRecipient] = []
    try:
        result = mailer.send_with_retries(
            sync_sender.send,
            rendered,
            max_retries=settings.smtp_max_retries,
            backoff_base=settings.smtp_backoff_base,
            backoff_max=settings.smtp_backoff_max,
            sleep=sleep,
            on_attempt=on_attempt,
        )
        rejected = list(result.rejected)
    except mailer.DeliveryError as exc:
        error = exc
        logger.warning("send failed: %s", exc.reply, extra={"message_id": rendered.message_id})
    except Exception as exc:  # a bug, not a delivery failure: record it, answer 500
        logger.exception(
            "unexpected error while sending", extra={"message_id": rendered.message_id}
        )
        error = mailer.PermanentDeliveryError(f"internal error: {type(exc).__name__}")
    response = SendResponse(
        ok=error is None,
        id=message_id,
        status="sent" if error is None else "failed",
        message_id=rendered.message_id,
        error=None if error is None else error.reply,
        rejected=[_rejected(item) for item in rejected],
    )
    code = 200 if error is None else 500
    body = response.model_dump_json()
    try:
        outbox.finish_sync(
            db.Outcome(
                id=message_id,
                attempt=max(attempts, 1),
                error=error,
                rejected=rejected,
                started_at=started,
            ),
            code,
            body,
        )
    except db.DatabaseUnavailable:
        # The mail went (or failed) already; the answer stands. The row stays in
        # `sending` until its lease expires and is then marked failed.
        logger.error("could not record the outcome of %s", message_id)
    return code, body
