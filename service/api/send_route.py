"""The send endpoints' route: declared as FastAPI endpoints, served by a handler that
resolves their three arguments itself.

The accept path is the service's hot path, and FastAPI's generic request handler
was a third of its cost: for every request it walks the endpoint's dependency tree
(three levels for `payload, context, idempotency_key`), computes cache keys and
looks at every parameter kind, to arrive at the same three values each time
(docs/benchmarks.md, "The accept path"). `SendRoute` keeps FastAPI for what it
does once (the OpenAPI schema, /docs, routing, the middleware and the error
handlers) and resolves the arguments directly, in FastAPI's order and with its
error shapes:

1. the body is read and, when its Content-Type is JSON, parsed (a JSON error is a
   422 `json_invalid` at once, as FastAPI raises it before any dependency);
2. `send_context`: the key (401) and the rate limit (429);
3. the Idempotency-Key header and then the body are validated, their errors
   reported together in one 422, the header's first.

Validation is pydantic's, called as FastAPI calls it (errors prefixed by their place), so
an error reads exactly as it does from FastAPI; tests/api/test_send_route.py holds
the two handlers to the same answers. What this handler does not do is open
FastAPI's native telemetry spans for "dependencies" and "endpoint": the request's
own span, from FastAPI's telemetry middleware, is still there.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, get_type_hints

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException

from service.api.deps import IDEMPOTENCY_KEY_PATTERN, SendContext, send_context
from service.api.errors import is_json

__all__ = ["SendRoute"]

# The endpoints this route serves take exactly these, in this order.
PARAMETERS = ("payload", "context", "idempotency_key")
IDEMPOTENCY_HEADER = "Idempotency-Key"

_idempotency_key = TypeAdapter(Annotated[str, StringConstraints(pattern=IDEMPOTENCY_KEY_PATTERN)])

Endpoint = Callable[[Any, SendContext, str | None], Coroutine[Any, Any, Response]]


class SendRoute(APIRoute):
    """An APIRoute for `async def endpoint(payload: Model, context: SendContextDep,
    idempotency_key: IdempotencyKeyDep = None) -> Response`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Endpoint = self.endpoint
        model = _body_model(endpoint)
        body = TypeAdapter(model)

        async def handle(request: Request) -> Response:
            received = await _json_body(request)
            context = await send_context(request, request.headers.get("x-api-key"))
            errors: list[dict[str, Any]] = []
            key = request.headers.get(IDEMPOTENCY_HEADER)
            if key is not None:
                key = _validated(_idempotency_key, key, ("header", IDEMPOTENCY_HEADER), errors)
            if received is _MISSING:
                errors.append(
                    {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
                )
                payload = None
            else:
                payload = _validated(body, received, ("body",), errors)
            if errors:
                raise RequestValidationError(
                    errors, body=None if received is _MISSING else received
                )
            return await endpoint(payload, context, key)

        return handle


def _body_model(endpoint: Endpoint) -> type[BaseModel]:
    """The endpoint's body model, after checking that its parameters are the ones this
    handler resolves (so that a change of signature fails at start-up, not per
    request)."""
    names = tuple(inspect.signature(endpoint).parameters)
    if names != PARAMETERS:
        raise TypeError(f"{endpoint.__qualname__} takes {names}; SendRoute serves {PARAMETERS}")
    model = get_type_hints(endpoint)["payload"]
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{endpoint.__qualname__}'s payload is not a pydantic model")
    return model


class _Missing:
    """No body at all (FastAPI's Undefined)."""


_MISSING = _Missing()


async def _json_body(request: Request) -> Any:
    """The body as FastAPI reads it for a JSON body parameter: parsed when its
    Content-Type is JSON, the bytes otherwise (which then fail validation), _MISSING
    when empty."""
    try:
        raw = await request.body()
        if not raw:
            return _MISSING
        if not is_json(request.headers.get("content-type")):
            return raw
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from exc
    except HTTPException:  # a middleware's (the body size limit's 413)
        raise
    except Exception as exc:  # not UTF-8 text, nested too deep, the client gone
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


def _validated(
    adapter: TypeAdapter[Any], value: Any, loc: tuple[str, ...], errors: list[dict[str, Any]]
) -> Any:
    try:
        return adapter.validate_python(value, from_attributes=True)
    except ValidationError as exc:
        errors.extend(
            {**error, "loc": loc + tuple(error.get("loc", ()))}
            for error in exc.errors(include_url=False)
        )
        return None
