"""POST /send_batch: up to BATCH_MAX messages, all or nothing.

Every item is checked and rendered before anything is stored; the first refusal
is the answer (422 or 413, naming the item's index). The batch then takes its
places under QUEUE_MAXSIZE at once (503 if they are not all there), and its rows
are committed in one transaction; only then is it answered, in request order.
An Idempotency-Key covers the batch as a whole: it is stored with the batch's
first row, together with the whole answer.
"""

from __future__ import annotations

import logging
import time

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from service.api import accept, idempotency
from service.api.deps import IdempotencyKeyDep, SendContextDep
from service.api.errors import validation_error
from service.api.offload import database_call
from service.api.send_steps import (
    after_failed_insert,
    checked_render,
    new_message,
    reserve_slots,
)
from service.ids import new_id
from service.models import BatchRequest, BatchResponse, SendRequest, SendResponse
from service.types import NewMessage, RenderedMessage

__all__ = ["send_batch"]

logger = logging.getLogger(__name__)


async def send_batch(
    payload: BatchRequest, context: SendContextDep, idempotency_key: IdempotencyKeyDep = None
) -> Response:
    """Queue every message of the batch, or none: 202 with one result per item, in order."""
    services = context.services
    settings = services.settings
    if len(payload.messages) > settings.batch_max:
        raise validation_error(
            ("body", "messages"),
            f"{len(payload.messages)} messages, at most {settings.batch_max} (BATCH_MAX) a "
            "batch: split it",
        )
    key = idempotency.IdempotencyKey.of(context.client.name, idempotency_key, payload, "send_batch")
    if key is not None:
        await idempotency.raise_if_answered(services.outbox, key, settings)
    now = time.time()
    items: list[tuple[str, RenderedMessage, float | None]] = []
    for index, item in enumerate(payload.messages):
        items.append(await _accept_item(item, index, context, now))
    due_now = sum(1 for _, _, send_at in items if send_at is None)
    if due_now:
        reserve_slots(context, due_now)
    results = [
        SendResponse(
            ok=True,
            id=message_id,
            status="queued" if send_at is None else "scheduled",
            message_id=rendered.message_id,
        )
        for message_id, rendered, send_at in items
    ]
    answer = BatchResponse(results=results).model_dump_json()
    rows: list[NewMessage] = []
    for index, ((message_id, rendered, send_at), item) in enumerate(
        zip(items, payload.messages, strict=True)
    ):
        # The batch's idempotency key and answer ride on its first row.
        first = index == 0
        rows.append(
            new_message(
                message_id,
                "async",
                rendered,
                item,
                context,
                key if first else None,
                202 if first else None,
                answer if first else None,
                send_at=send_at,
            )
        )
    outbox = services.outbox
    try:
        await database_call(outbox, outbox.insert_all, rows)
    except BaseException as exc:
        if due_now:
            services.worker.release(due_now)
        return await after_failed_insert(exc, context, key, payload.messages)
    for message_id, _, send_at in items:
        if send_at is None:
            services.worker.enqueue(message_id)
    services.metrics.accepted.labels("send_batch").inc(len(items))
    logger.debug("queued a batch of %d", len(items))
    return Response(content=answer, status_code=202, media_type="application/json")


async def _accept_item(
    item: SendRequest, index: int, context: SendContextDep, now: float
) -> tuple[str, RenderedMessage, float | None]:
    """One item's checks and render, its refusal naming its index."""
    message_id = new_id()
    try:
        send_at = accept.send_time(item, now)
        rendered = await checked_render(item, context.services, message_id)
    except RequestValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))
            rest = loc[1:] if loc[:1] == ("body",) else loc
            errors.append({**error, "loc": ("body", "messages", index, *rest)})
        raise RequestValidationError(errors) from None
    except HTTPException as exc:
        raise HTTPException(
            status_code=exc.status_code,
            detail=f"messages[{index}]: {exc.detail}",
            headers=exc.headers,
        ) from None
    return message_id, rendered, send_at
