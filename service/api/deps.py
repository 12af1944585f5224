"""Dependencies of the endpoints: the API key, the caller, the services, as
`Annotated` aliases that read the app's one Services object."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from service.api.errors import unauthorized
from service.api.services import Services
from service.config import Settings

__all__ = [
    "Client",
    "ClientDep",
    "IdempotencyKeyDep",
    "SendContext",
    "SendContextDep",
    "ServicesDep",
    "authenticate",
    "has_valid_key",
]

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="APIKey",
    description="One of the keys in API_KEY.",
)


@dataclass(frozen=True, slots=True)
class Client:
    """The caller, by its key's name (`NAME=SECRET`, or a bare secret's fingerprint),
    never the secret itself. Records, idempotency keys and rate limits belong to the
    name, so a rotated secret (`billing=old,billing=new`) sees the same records."""

    name: str


def authenticate(settings: Settings, presented: str | None) -> Client | None:
    if not presented:
        return None
    # Headers arrive as latin-1 text; compare the raw bytes against every key without
    # stopping at the first match, so timing reveals neither the key nor its position.
    raw = presented.encode("latin-1", "replace")
    matched: str | None = None
    for key in settings.api_keys:
        if hmac.compare_digest(raw, key.secret.encode()):
            matched = key.name
    return None if matched is None else Client(matched)


def has_valid_key(settings: Settings, presented: str | None) -> bool:
    return authenticate(settings, presented) is not None


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]
KeyHeader = Annotated[str | None, Security(api_key_header)]


async def require_api_key(services: ServicesDep, key: KeyHeader) -> Client:
    client = authenticate(services.settings, key)
    if client is None:
        raise unauthorized()
    return client


ClientDep = Annotated[Client, Depends(require_api_key)]


@dataclass(frozen=True, slots=True)
class SendContext:
    """What a send endpoint needs, gathered by one dependency.

    The accept path is the hot path: each FastAPI dependency costs a resolution step
    per request, so the send endpoints take this one object (authenticated and rate
    limited) instead of one dependency per piece.
    """

    client: Client
    services: Services


async def send_context(request: Request, key: KeyHeader) -> SendContext:
    services = get_services(request)
    client = await require_api_key(services, key)
    limiter = services.rate_limiter
    if limiter is not None:
        wait = limiter.acquire(client.name)
        if wait is not None:
            services.metrics.rejected.labels("rate_limited").inc()
            raise HTTPException(
                status_code=429,
                detail="rate limit exceeded for this API key: retry after the seconds in "
                "Retry-After",
                headers={"Retry-After": str(wait)},
            )
    return SendContext(client, services)


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
