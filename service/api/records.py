"""The records of a key's messages: one by id, a filtered list page by page, cancel.

Every read and write here is scoped to the caller's key name: another key's
message answers 404, exactly as an unknown id does, so ids reveal nothing.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated

from fastapi import HTTPException, Query

from service.api.cursors import bad_cursor, decode_cursor, encode_cursor, filters_digest
from service.api.deps import ClientDep, ServicesDep
from service.api.errors import validation_error
from service.api.offload import database_call
from service.api.sync_send import rejected_model
from service.db.reads import MessageFilter
from service.models import (
    AttachmentSummary,
    EventModel,
    MessageList,
    MessageStatus,
    StatusName,
    Tag,
)
from service.syntax import canonical_address, parse_address
from service.types import MessageRecord

__all__ = [
    "cancel_message",
    "get_message",
    "list_messages",
    "record_model",
]

_NOT_FOUND = (
    "no message with this id: use the id a send answered, with the API key (or a key of "
    "the same name) that sent it"
)
_CANCELLABLE = ("scheduled", "queued")


def record_model(record: MessageRecord) -> MessageStatus:
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
        rejected=[rejected_model(item) for item in record.rejected],
        tags=record.tags,
        metadata=record.metadata,
        send_at=iso(record.send_at),
        attachments=[
            AttachmentSummary(
                filename=a.filename,
                content_type=a.content_type,
                size=a.size,
                content_id=a.content_id,
            )
            for a in record.attachments
        ],
        events=[
            EventModel(
                type=e.type, at=iso(e.at) or "", code=e.code, detail=e.detail, recipient=e.recipient
            )
            for e in record.events
        ],
    )


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")


async def get_message(message_id: str, client: ClientDep, services: ServicesDep) -> MessageStatus:
    """A message's record: status, attempts, last error, times, timeline. Never its body."""
    outbox = services.outbox
    record = await database_call(outbox, outbox.get, message_id, client.name)
    if record is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    return record_model(record)


async def list_messages(
    client: ClientDep,
    services: ServicesDep,
    status: Annotated[StatusName | None, Query(description="only messages in this status")] = None,
    tag: Annotated[Tag | None, Query(description="only messages with this tag")] = None,
    to: Annotated[
        str | None, Query(description="only messages with this recipient (to, cc or bcc)")
    ] = None,
    since: Annotated[
        datetime | None,
        Query(description="only messages accepted at or after this RFC 3339 time"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="at most this many")] = 50,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page, with the same filters"),
    ] = None,
) -> MessageList:
    """This key's messages, newest first, a page at a time."""
    recipient = _recipient(to)
    since_id = _since_id(since)
    filters = filters_digest(status, tag, recipient, since_id)
    where = MessageFilter(
        key_name=client.name,
        status=status,
        tag=tag,
        recipient=recipient,
        since_id=since_id,
        before_id=_cursor_id(cursor, filters) if cursor else None,
    )
    outbox = services.outbox
    # One more than asked: whether a next page exists, without a count.
    records = await database_call(outbox, functools.partial(outbox.list_messages, where, limit + 1))
    page = records[:limit]
    more = len(records) > limit
    return MessageList(
        messages=[record_model(record) for record in page],
        next_cursor=encode_cursor(page[-1].id, filters) if more else None,
    )


async def cancel_message(
    message_id: str, client: ClientDep, services: ServicesDep
) -> MessageStatus:
    """A scheduled or queued message becomes cancelled and is never sent."""
    outbox = services.outbox
    cancelled = await database_call(outbox, outbox.cancel, message_id, client.name)
    record = await database_call(outbox, outbox.get, message_id, client.name)
    if record is None:
        raise HTTPException(status_code=404, detail=_NOT_FOUND)
    if not cancelled:
        if record.status == "cancelled":
            detail = "the message is already cancelled"
        else:
            detail = (
                f"the message is {record.status}: only a scheduled or queued message "
                "(not yet claimed by a delivery) can be cancelled"
            )
        raise HTTPException(status_code=409, detail=detail)
    return record_model(record)


# -- the filters and the cursor ---------------------------------------------------------


def _recipient(to: str | None) -> str | None:
    if to is None:
        return None
    try:
        # As the envelope stores it: the domain in lower-case ASCII (IDNA).
        return canonical_address(parse_address(to)[1])
    except ValueError as exc:
        raise validation_error(("query", "to"), str(exc), to) from None


def _since_id(since: datetime | None) -> str | None:
    """The smallest record id of that millisecond: ids start with their time
    (UUIDv7), so `since` is a range of the index that lists."""
    if since is None:
        return None
    if since.tzinfo is None:
        raise validation_error(
            ("query", "since"),
            "give the time with its offset (RFC 3339), e.g. 2026-12-01T10:00:00Z",
            since.isoformat(),
        )
    millis = max(0, int(since.timestamp() * 1000))
    return f"{millis:012x}" + "0" * 20


def _cursor_id(cursor: str, filters: str) -> str:
    last_id = decode_cursor(cursor, filters)
    if not isinstance(last_id, str):
        raise bad_cursor(cursor)
    return last_id
