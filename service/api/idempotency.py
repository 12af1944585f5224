"""Idempotency-Key: a repeated request is answered with the first one's answer.

The key is scoped to the API key's name (a bare key's name is its fingerprint,
as before names existed) and bound to a hash of the
endpoint and the request, so the same key with another body is a 422, and a
request still in progress is a 409.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import Response
from pydantic import BaseModel

from service.api.errors import EarlierAnswer, validation_error
from service.api.offload import database_call
from service.config import Settings
from service.db import Outbox
from service.types import IdempotencyRecord

__all__ = ["IdempotencyKey", "raise_if_answered", "replay_after_race", "request_hash"]

_IN_PROGRESS = (
    "a request with this Idempotency-Key is still in progress: repeat it once that one "
    "is answered to get its answer"
)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    scope: str  # "<api key name>:<Idempotency-Key>"
    request_hash: str

    @classmethod
    def of(
        cls, key_name: str, key: str | None, request: BaseModel, endpoint: str
    ) -> IdempotencyKey | None:
        if key is None:
            return None
        return cls(f"{key_name}:{key}", request_hash(request, endpoint))


def request_hash(request: BaseModel, endpoint: str) -> str:
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


async def _find(outbox: Outbox, scope: str, settings: Settings) -> IdempotencyRecord | None:
    # Keys older than the TTL count as absent even before purge() removes them.
    not_before = time.time() - settings.idempotency_ttl_seconds
    return await database_call(
        outbox, functools.partial(outbox.find_idempotent, scope, not_before=not_before)
    )


async def raise_if_answered(outbox: Outbox, key: IdempotencyKey, settings: Settings) -> None:
    """EarlierAnswer when this key was used before (or 409/422, see `_replay`)."""
    record = await _find(outbox, key.scope, settings)
    if record is not None:
        raise EarlierAnswer(_replay(record, key.request_hash))


async def replay_after_race(outbox: Outbox, key: IdempotencyKey, settings: Settings) -> Response:
    """A concurrent request with the same key committed first: answer as a repeat of it."""
    record = await _find(outbox, key.scope, settings)
    if record is None:  # purged in between: vanishingly rare, and safe to retry
        raise HTTPException(status_code=409, detail=_IN_PROGRESS)
    return _replay(record, key.request_hash)


def _replay(record: IdempotencyRecord, hashed: str) -> Response:
    if record.request_hash != hashed:
        raise validation_error(
            ("header", "Idempotency-Key"),
            "this Idempotency-Key was used with a different request body: use a new key "
            "for a new request",
        )
    if record.response_code is None or record.response_body is None:
        raise HTTPException(
            status_code=409,
            detail=_IN_PROGRESS,
        )
    return Response(
        content=record.response_body,
        status_code=record.response_code,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )
