"""The steps the send endpoints share: checks and render, a place under
QUEUE_MAXSIZE, the row to store, and what a failed insert answers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import HTTPException
from fastapi.responses import Response

from service import mailer
from service.api import accept, idempotency
from service.api.deps import SendContext
from service.api.errors import SHUTDOWN_RETRY_AFTER, validation_error
from service.api.services import Services
from service.errors import (
    DatabaseUnavailable,
    IdempotencyKeyTaken,
    QueueFull,
    RecipientSuppressed,
    ShuttingDown,
)
from service.models import SendRequest
from service.syntax import canonical_address, parse_address, suppression_key
from service.types import AttachmentInfo, Mode, NewMessage, RenderedMessage

__all__ = [
    "accept_request",
    "after_failed_insert",
    "checked_render",
    "new_message",
    "render_for_relay",
    "reserve_slots",
    "suppressed_answer",
]

logger = logging.getLogger(__name__)


async def accept_request(
    payload: SendRequest, context: SendContext, key: str | None, endpoint: str, message_id: str
) -> tuple[idempotency.IdempotencyKey | None, RenderedMessage]:
    """Checks, then the message rendered as `message_id`, with its idempotency key.
    Raises EarlierAnswer when the Idempotency-Key was used before."""
    services = context.services
    accept.check_request(payload, services.settings, services.sender_policy)
    scoped = idempotency.IdempotencyKey.of(context.client.name, key, payload, endpoint)
    if scoped is not None:
        await idempotency.raise_if_answered(services.outbox, scoped, services.settings)
    return scoped, await render_for_relay(payload, services, message_id)


async def checked_render(
    payload: SendRequest, services: Services, message_id: str
) -> RenderedMessage:
    """The checks that need settings, then render_for_relay."""
    accept.check_request(payload, services.settings, services.sender_policy)
    return await render_for_relay(payload, services, message_id)


async def render_for_relay(
    payload: SendRequest, services: Services, message_id: str
) -> RenderedMessage:
    """The render held to MAX_MESSAGE_BYTES, and whether the relay can carry it."""
    rendered = accept.render(payload, services.settings, message_id)
    if rendered.smtputf8:
        await accept.check_relay_can_carry(rendered, services.relay_features, services.smtp_slots)
    return rendered


def suppressed_answer(exc: RecipientSuppressed, payloads: Sequence[SendRequest]) -> Exception:
    """The 422 for an insert refused because it names a suppressed address: the field
    that holds it (and, for a batch, the item's index)."""
    payload = payloads[exc.index] if exc.index < len(payloads) else payloads[0]
    field = _field_naming(payload, suppression_key(exc.address))
    loc: tuple[str | int, ...] = ("body", field)
    if len(payloads) > 1:
        loc = ("body", "messages", exc.index, field)
    return validation_error(
        loc,
        f"{exc.address} is on the suppression list (an earlier message to it bounced for "
        "good, or it was added by hand): nothing was sent; remove it with "
        f"DELETE /suppressions/{exc.address} to mail it again",
        exc.address,
    )


def _field_naming(payload: SendRequest, key: str) -> str:
    """Which of to, cc and bcc holds the address whose suppression key is `key`."""
    for name in ("to", "cc", "bcc"):
        for value in getattr(payload, name) or []:
            try:
                if suppression_key(canonical_address(parse_address(value)[1])) == key:
                    return name
            except ValueError:
                continue
    return "to"


def reserve_slots(context: SendContext, count: int) -> None:
    """`count` places in the backlog bound, all or none, or a 503 with Retry-After."""
    services = context.services
    try:
        services.worker.reserve(count)
    except QueueFull as exc:
        services.metrics.rejected.labels("queue_full").inc()
        raise HTTPException(
            status_code=503,
            detail=f"no room in the queue for {_messages(count)} (QUEUE_MAXSIZE): nothing "
            "was stored; retry after the seconds in Retry-After",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except ShuttingDown:
        services.metrics.rejected.labels("shutting_down").inc()
        raise HTTPException(
            status_code=503,
            detail="this instance is shutting down: nothing was stored; retry after the "
            "seconds in Retry-After",
            headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER)},
        ) from None


def _messages(count: int) -> str:
    return "the message" if count == 1 else f"the batch's {count} messages"


def new_message(
    message_id: str,
    mode: Mode,
    rendered: RenderedMessage,
    payload: SendRequest,
    context: SendContext,
    key: idempotency.IdempotencyKey | None,
    response_code: int | None = None,
    response_body: str | None = None,
    *,
    send_at: float | None = None,
) -> NewMessage:
    return NewMessage(
        id=message_id,
        mode=mode,
        rendered=rendered,
        to=payload.to,
        subject=payload.subject,
        key_name=context.client.name,
        tags=payload.tags,
        metadata=payload.metadata,
        attachments=_attachment_infos(payload),
        send_at=send_at,
        idempotency_scope=key.scope if key else None,
        request_hash=key.request_hash if key else None,
        response_code=response_code,
        response_body=response_body,
    )


def _attachment_infos(payload: SendRequest) -> list[AttachmentInfo]:
    if not payload.attachments:
        return []
    return [
        AttachmentInfo(
            filename=part.filename,
            content_type=part.content_type,
            size=len(part.content),
            content_id=part.content_id,
        )
        for part in mailer.file_parts(payload)
    ]


async def after_failed_insert(
    exc: BaseException,
    context: SendContext,
    key: idempotency.IdempotencyKey | None,
    payloads: Sequence[SendRequest],
) -> Response:
    """A concurrent request with the same key won: replay it. A recipient is
    suppressed: a 422 naming it. The database is gone: count it and answer 503.
    Anything else (cancellation included) propagates."""
    services = context.services
    if isinstance(exc, RecipientSuppressed):
        raise suppressed_answer(exc, payloads) from None
    if isinstance(exc, IdempotencyKeyTaken) and key is not None:
        return await idempotency.replay_after_race(services.outbox, key, services.settings)
    if isinstance(exc, DatabaseUnavailable):
        services.metrics.rejected.labels("database_unavailable").inc()
        logger.warning("database unavailable; answered 503")
    raise exc
