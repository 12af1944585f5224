"""The endpoints, each a short function that reads as its named steps."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from service.api import accept, idempotency
from service.api.deps import ClientDep, IdempotencyKeyDep, SendContext, SendContextDep, ServicesDep
from service.api.errors import SHUTDOWN_RETRY_AFTER
from service.api.offload import database_call, run_in_daemon_thread
from service.api.sync_send import deliver_sync, rejected_model
from service.errors import DatabaseUnavailable, IdempotencyKeyTaken, QueueFull, ShuttingDown
from service.ids import new_id
from service.metrics import CONTENT_TYPE_LATEST
from service.models import ErrorResponse, HealthResponse, MessageStatus, SendRequest, SendResponse
from service.types import Mode, NewMessage, RenderedMessage

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

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


async def health() -> HealthResponse:
    """Liveness: the process answers HTTP."""
    return HealthResponse(status="ok")


async def send_async(
    payload: SendRequest, context: SendContextDep, idempotency_key: IdempotencyKeyDep = None
) -> Response:
    """Queue a message: answered 202 only once it is committed to the database."""
    services = context.services
    message_id = new_id()
    key, rendered = await _accept(payload, context, idempotency_key, "send_async", message_id)
    _reserve_slot(context)
    answer = SendResponse(
        ok=True, id=message_id, status="queued", message_id=rendered.message_id
    ).model_dump_json()
    new = _new_message(message_id, "async", rendered, payload, key, 202, answer)
    committed = False

    def hand_to_workers() -> None:
        # Right after the commit (see group_commit.py).
        nonlocal committed
        committed = True
        services.worker.enqueue(message_id)

    try:
        await services.committer.insert(new, on_commit=hand_to_workers)
    except BaseException as exc:
        # Cancelled (client gone, shutdown) too. After the commit the message is
        # queued and keeps its slot. Before it, the insert may still be committed
        # later (it is in the writer's queue): hand_to_workers then queues it all
        # the same, and the scheduler's backlog re-sync corrects the count.
        if not committed:
            services.worker.release()
        return await _after_failed_insert(exc, context, key)
    services.metrics.accepted.labels("send_async").inc()
    logger.debug("queued %s", message_id, extra={"message_id": rendered.message_id})
    return Response(content=answer, status_code=202, media_type="application/json")


async def send(
    payload: SendRequest, context: SendContextDep, idempotency_key: IdempotencyKeyDep = None
) -> Response:
    """Send now and answer with the outcome: 200 sent, 500 failed (retries included)."""
    services = context.services
    message_id = new_id()
    key, rendered = await _accept(payload, context, idempotency_key, "send", message_id)
    new = _new_message(message_id, "sync", rendered, payload, key)
    try:
        # Through the committer like /send_async: batched with the other inserts,
        # and never a database round trip on the event loop with PostgreSQL.
        await services.committer.insert(new)
    except BaseException as exc:
        return await _after_failed_insert(exc, context, key)
    services.metrics.accepted.labels("send").inc()
    code, answer = await run_in_daemon_thread(
        services.smtp_slots, deliver_sync, services, message_id, rendered
    )
    return Response(content=answer, status_code=code, media_type="application/json")


async def get_message(message_id: str, client: ClientDep, services: ServicesDep) -> MessageStatus:
    """A message's record: status, attempts, last error, times. Never its body."""
    outbox = services.outbox
    record = await database_call(outbox, outbox.get, message_id)
    if record is None:
        raise HTTPException(status_code=404, detail="no message with this id")
    return MessageStatus(
        id=record.id,
        status=record.status,
        attempts=record.attempts,
        last_error=record.last_error,
        created_at=_iso(record.created_at) or "",
        updated_at=_iso(record.updated_at) or "",
        sent_at=_iso(record.sent_at),
        message_id=record.message_id,
        to=record.to,
        subject=record.subject,
        rejected=[rejected_model(item) for item in record.rejected],
    )


async def metrics_endpoint(services: ServicesDep) -> Response:
    """Prometheus text format (see service/metrics.py for the series)."""
    # Rendering reads the oldest queued message's age from the database.
    text = await database_call(services.outbox, services.metrics.render)
    return Response(content=text, media_type=CONTENT_TYPE_LATEST)


def add_routes(app: FastAPI, *, metrics: bool) -> None:
    """Register the endpoints on the app itself. Not through an APIRouter: FastAPI
    keeps an included router as one more routing layer that every request walks."""
    app.add_api_route(
        "/health", health, methods=["GET"], response_model=HealthResponse, tags=["service"]
    )
    app.add_api_route(
        "/send_async",
        send_async,
        methods=["POST"],
        status_code=202,
        response_model=SendResponse,
        responses=SEND_RESPONSES,
        tags=["mail"],
    )
    app.add_api_route(
        "/send",
        send,
        methods=["POST"],
        response_model=SendResponse,
        responses={
            **SEND_RESPONSES,
            500: {"model": SendResponse, "description": "The relay refused or failed"},
            503: {"model": ErrorResponse, "description": "Database unavailable"},
        },
        tags=["mail"],
    )
    app.add_api_route(
        "/messages/{message_id}",
        get_message,
        methods=["GET"],
        response_model=MessageStatus,
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorResponse, "description": "No message with this id"},
            503: {"model": ErrorResponse, "description": "Database unavailable"},
        },
        tags=["mail"],
    )
    if metrics:
        app.add_api_route(
            "/metrics",
            metrics_endpoint,
            methods=["GET"],
            tags=["service"],
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
        )


# -- the steps ----------------------------------------------------------------------


async def _accept(
    payload: SendRequest, context: SendContext, key: str | None, endpoint: str, message_id: str
) -> tuple[idempotency.IdempotencyKey | None, RenderedMessage]:
    """Checks, then the message rendered as `message_id`, with its idempotency key.
    Raises EarlierAnswer when the Idempotency-Key was used before."""
    services = context.services
    accept.check_request(payload, services.settings, services.sender_policy)
    scoped = idempotency.IdempotencyKey.of(context.client.fingerprint, key, payload, endpoint)
    if scoped is not None:
        await idempotency.raise_if_answered(services.outbox, scoped, services.settings)
    rendered = accept.render(payload, services.settings, message_id)
    if rendered.smtputf8:
        await accept.check_relay_can_carry(rendered, services.relay_features, services.smtp_slots)
    return scoped, rendered


def _reserve_slot(context: SendContext) -> None:
    """One place in the backlog bound, or a 503 with Retry-After."""
    services = context.services
    try:
        services.worker.reserve()
    except QueueFull as exc:
        services.metrics.rejected.labels("queue_full").inc()
        raise HTTPException(
            status_code=503,
            detail="the queue is full; retry later",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except ShuttingDown:
        services.metrics.rejected.labels("shutting_down").inc()
        raise HTTPException(
            status_code=503,
            detail="shutting down; retry later",
            headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER)},
        ) from None


def _new_message(
    message_id: str,
    mode: Mode,
    rendered: RenderedMessage,
    payload: SendRequest,
    key: idempotency.IdempotencyKey | None,
    response_code: int | None = None,
    response_body: str | None = None,
) -> NewMessage:
    return NewMessage(
        id=message_id,
        mode=mode,
        rendered=rendered,
        to=payload.to,
        subject=payload.subject,
        idempotency_scope=key.scope if key else None,
        request_hash=key.request_hash if key else None,
        response_code=response_code,
        response_body=response_body,
    )


async def _after_failed_insert(
    exc: BaseException, context: SendContext, key: idempotency.IdempotencyKey | None
) -> Response:
    """A concurrent request with the same key won: replay it. The database is gone:
    count it and answer 503. Anything else (cancellation included) propagates."""
    services = context.services
    if isinstance(exc, IdempotencyKeyTaken) and key is not None:
        return await idempotency.replay_after_race(services.outbox, key, services.settings)
    if isinstance(exc, DatabaseUnavailable):
        services.metrics.rejected.labels("database_unavailable").inc()
        logger.warning("database unavailable; answered 503")
    raise exc


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")
