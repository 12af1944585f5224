"""The endpoints, each a short function that reads as its named steps."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from service.api import accept, batch, records, suppressions
from service.api.deps import IdempotencyKeyDep, SendContextDep, ServicesDep
from service.api.offload import database_call, run_in_daemon_thread
from service.api.send_route import SendRoute
from service.api.send_steps import accept_request, after_failed_insert, new_message, reserve_slots
from service.api.sync_send import deliver_sync
from service.ids import new_id
from service.metrics import CONTENT_TYPE_LATEST
from service.models import (
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    MessageList,
    MessageStatus,
    SendRequest,
    SendResponse,
    SuppressionModel,
    SuppressionPage,
)

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key"},
}
# The records' endpoints: the key, an id of this key's, the database.
RECORD_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "No message with this id for this key"},
    503: {"model": ErrorResponse, "description": "Database unavailable"},
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
    key, rendered = await accept_request(
        payload, context, idempotency_key, "send_async", message_id
    )
    send_at = accept.send_time(payload, time.time())
    # A scheduled message counts toward QUEUE_MAXSIZE only once it is due.
    scheduled = send_at is not None
    if not scheduled:
        reserve_slots(context, 1)
    answer = SendResponse(
        ok=True,
        id=message_id,
        status="scheduled" if scheduled else "queued",
        message_id=rendered.message_id,
    ).model_dump_json()
    new = new_message(
        message_id, "async", rendered, payload, context, key, 202, answer, send_at=send_at
    )
    committed = False

    def hand_to_workers() -> None:
        # Right after the commit (see group_commit.py).
        nonlocal committed
        committed = True
        if not scheduled:
            services.worker.enqueue(message_id)

    try:
        await services.committer.insert(new, on_commit=hand_to_workers)
    except BaseException as exc:
        # Cancelled (client gone, shutdown) too. After the commit the message is
        # queued and keeps its slot. Before it, the insert may still be committed
        # later (it is in the writer's queue): hand_to_workers then queues it all
        # the same, and the scheduler's backlog re-sync corrects the count.
        if not committed and not scheduled:
            services.worker.release()
        return await after_failed_insert(exc, context, key, [payload])
    services.metrics.accepted.labels("send_async").inc()
    logger.debug("queued %s", message_id, extra={"message_id": rendered.message_id})
    return Response(content=answer, status_code=202, media_type="application/json")


async def send(
    payload: SendRequest, context: SendContextDep, idempotency_key: IdempotencyKeyDep = None
) -> Response:
    """Send now and answer with the outcome: 200 sent, 500 failed (retries included)."""
    services = context.services
    message_id = new_id()
    accept.refuse_send_at(payload)
    key, rendered = await accept_request(payload, context, idempotency_key, "send", message_id)
    new = new_message(message_id, "sync", rendered, payload, context, key)

    def store_and_deliver() -> tuple[int, str] | Exception:
        # The row is committed before anything reaches the relay. In the delivery's
        # own thread rather than through the committer: one hand-off to a thread and
        # back per request instead of a turn of the event loop and then that, and
        # never a database round trip on the event loop with PostgreSQL.
        try:
            services.outbox.insert(new)
        except Exception as exc:  # not stored: answered as a failed insert, below
            return exc
        services.metrics.accepted.labels("send").inc()
        return deliver_sync(services, message_id, rendered)

    outcome = await run_in_daemon_thread(services.smtp_slots, store_and_deliver)
    if isinstance(outcome, Exception):
        return await after_failed_insert(outcome, context, key, [payload])
    code, answer = outcome
    return Response(content=answer, status_code=code, media_type="application/json")


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
    app.router.add_api_route(
        "/send_async",
        send_async,
        route_class_override=SendRoute,
        methods=["POST"],
        status_code=202,
        response_model=SendResponse,
        responses=SEND_RESPONSES,
        tags=["mail"],
    )
    app.router.add_api_route(
        "/send",
        send,
        route_class_override=SendRoute,
        methods=["POST"],
        response_model=SendResponse,
        responses={
            **SEND_RESPONSES,
            500: {"model": SendResponse, "description": "The relay refused or failed"},
            503: {"model": ErrorResponse, "description": "Database unavailable"},
        },
        tags=["mail"],
    )
    app.router.add_api_route(
        "/send_batch",
        batch.send_batch,
        route_class_override=SendRoute,
        methods=["POST"],
        status_code=202,
        response_model=BatchResponse,
        responses={
            **SEND_RESPONSES,
            413: {
                "model": ErrorResponse,
                "description": "Body over BATCH_MAX_BYTES, or an item's built message over "
                "MAX_MESSAGE_BYTES",
            },
            503: {
                "model": ErrorResponse,
                "description": "No room for the whole batch, database unavailable or shutting "
                "down; see Retry-After. Nothing was stored.",
            },
        },
        tags=["mail"],
    )
    app.add_api_route(
        "/messages",
        records.list_messages,
        methods=["GET"],
        response_model=MessageList,
        responses={**ERROR_RESPONSES, 503: RECORD_RESPONSES[503]},
        tags=["records"],
    )
    app.add_api_route(
        "/messages/{message_id}",
        records.get_message,
        methods=["GET"],
        response_model=MessageStatus,
        responses=RECORD_RESPONSES,
        tags=["records"],
    )
    app.add_api_route(
        "/messages/{message_id}/cancel",
        records.cancel_message,
        methods=["POST"],
        response_model=MessageStatus,
        responses={
            **RECORD_RESPONSES,
            409: {"model": ErrorResponse, "description": "Not scheduled or queued any more"},
        },
        tags=["records"],
    )
    app.add_api_route(
        "/suppressions",
        suppressions.list_suppressions,
        methods=["GET"],
        response_model=SuppressionPage,
        responses={**ERROR_RESPONSES, 503: RECORD_RESPONSES[503]},
        tags=["suppressions"],
    )
    app.add_api_route(
        "/suppressions/{address}",
        suppressions.put_suppression,
        methods=["PUT"],
        response_model=SuppressionModel,
        responses={
            **ERROR_RESPONSES,
            201: {"model": SuppressionModel, "description": "Added"},
            503: RECORD_RESPONSES[503],
        },
        tags=["suppressions"],
    )
    app.add_api_route(
        "/suppressions/{address}",
        suppressions.delete_suppression,
        methods=["DELETE"],
        status_code=204,
        response_class=Response,
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorResponse, "description": "Not on the list"},
            503: RECORD_RESPONSES[503],
        },
        tags=["suppressions"],
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
