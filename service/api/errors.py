"""How failures become HTTP answers: one shape for every refusal, the 503s, and the
handlers that put a missing key (401) before anything the body says.

Every error answer is a JSON object with one member, `detail`:

- 422: a list of field errors, `{"loc": [...], "msg": "...", "type": "..."}` (FastAPI's
  shape; `input` and `ctx` when they help), each `msg` saying what to do;
- every other refusal: one string saying what went wrong and what to do.

POST /send's 500 is not a refusal but an outcome: a SendResponse whose `error` is
the relay's reply as the record's `last_error` keeps it (service/api/sync_send.py).
"""

from __future__ import annotations

import email.message
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.errors import DatabaseUnavailable

__all__ = [
    "DATABASE_RETRY_AFTER",
    "JSON_HINT",
    "SHUTDOWN_RETRY_AFTER",
    "EarlierAnswer",
    "database_unavailable",
    "explain",
    "install_error_handlers",
    "is_json",
    "unauthorized",
    "validation_error",
]

# Seconds a client should wait after a 503 caused by the database (locked, full, gone).
DATABASE_RETRY_AFTER = 5
# After SIGTERM this instance takes no new work; another instance (or this one once
# restarted) will.
SHUTDOWN_RETRY_AFTER = 5

UNAUTHORIZED = (
    "missing or wrong API key: send one of the service's keys (API_KEY) in the X-API-Key header"
)
JSON_HINT = "send a JSON object with Content-Type: application/json"
INTERNAL_ERROR = "internal error, logged by the service: retry later, and report it if it persists"

# What pydantic puts before the text of a ValueError or AssertionError raised in a
# validator: noise to a caller, who reads our text (the `type` still says which).
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
# pydantic's types for "this is not an object", when the body itself is the input.
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})
# Where the input may hold message text (the whole request, a batch or one of its
# items, a body, the attachments): never echoed, as no answer carries a message's text.
_PRIVATE_FIELDS = frozenset({"body", "html", "content", "messages", "attachments"})
# Starlette's own 404 and 405 carry only the status phrase; say what to do instead.
_ROUTING_HINTS = {
    404: "no such path: the API's paths are listed at /docs",
    405: "this method is not allowed on this path: use {allow} (see /docs)",
}
# pydantic's text for a header parameter that does not match its pattern names the
# regular expression; say it in words.
_PARAMETER_HINTS = {
    ("header", "Idempotency-Key"): "Idempotency-Key must be 1 to 255 printable ASCII "
    "characters without spaces, e.g. a UUID",
}


class EarlierAnswer(Exception):
    """The request repeats an Idempotency-Key: answer what the first request answered."""

    def __init__(self, response: Response) -> None:
        super().__init__("replayed")
        self.response = response


def validation_error(loc: tuple[str | int, ...], message: str, value: Any = None) -> Exception:
    """A 422 in exactly the shape FastAPI gives invalid bodies."""
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


def unauthorized() -> HTTPException:
    return HTTPException(
        status_code=401, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "APIKey"}
    )


def database_unavailable() -> HTTPException:
    return HTTPException(
        status_code=503,
        detail="the database is unavailable: nothing was stored; retry after the seconds "
        "in Retry-After",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def explain(error: dict[str, Any], content_type: str | None) -> dict[str, Any]:
    """One 422 item as we answer it: pydantic's prefix gone, a body that is not a JSON
    object told how to send one, no message text echoed. `content_type` is the
    request's Content-Type header."""
    item = dict(error)
    loc = tuple(item.get("loc", ()))
    kind = item.get("type")
    message = str(item.get("msg", ""))
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            message = message.removeprefix(prefix)
            # Its ctx holds only the exception object, which serialises as {}.
            item.pop("ctx", None)
    if kind == "json_invalid":
        reason = (item.get("ctx") or {}).get("error", "a syntax error")
        where = f" at character {loc[-1]}" if len(loc) > 1 else ""
        message = f"the body is not valid JSON ({reason}{where}): {JSON_HINT}"
        item.pop("input", None)  # FastAPI puts {} there: nothing was parsed
    elif loc == ("body",) and kind == "missing":
        message = f"the body is empty: {JSON_HINT}"
    elif _is_batch_item(loc) and kind in _NOT_AN_OBJECT:
        message = "each item of 'messages' must be a JSON object of a message's fields"
    elif loc == ("body",) and kind in _NOT_AN_OBJECT:
        if is_json(content_type):
            message = "the body must be a JSON object of the request's fields (see /docs)"
        else:
            given = f"Content-Type {content_type}" if content_type else "no Content-Type"
            message = f"the body was sent with {given}, not as JSON: {JSON_HINT}"
    elif kind == "string_pattern_mismatch" and loc in _PARAMETER_HINTS:
        message = _PARAMETER_HINTS[loc]
    item["msg"] = message
    if _is_private(loc):
        item.pop("input", None)
    return item


def is_json(content_type: str | None) -> bool:
    """FastAPI's own test of a Content-Type for a JSON body, strict as its default:
    application/json or application/*+json; no Content-Type is not JSON."""
    if not content_type:
        return False
    if content_type == "application/json":  # nearly every request: no header parse
        return True
    parsed = email.message.Message()
    parsed["content-type"] = content_type
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _is_batch_item(loc: tuple[Any, ...]) -> bool:
    return len(loc) == 3 and loc[:2] == ("body", "messages")


def _is_private(loc: tuple[Any, ...]) -> bool:
    return bool(loc) and loc[0] == "body" and (_is_batch_item(loc) or loc[-1] in _PRIVATE_FIELDS)


def install_error_handlers(
    app: FastAPI, settings: Settings, has_valid_key: Callable[[Settings, str | None], bool]
) -> None:
    protected = {"/send", "/send_async", "/send_batch"}

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        # FastAPI parses JSON before it runs dependencies, so a malformed body would
        # answer 422 before the key is checked. A caller without a valid key learns
        # nothing about our validation: 401 first.
        path = request.url.path
        needs_key = path in protected or path.startswith("/messages")
        if needs_key and not has_valid_key(settings, request.headers.get("x-api-key")):
            return JSONResponse(
                {"detail": UNAUTHORIZED},
                status_code=401,
                headers={"WWW-Authenticate": "APIKey"},
            )
        content_type = request.headers.get("content-type")
        errors = cast(RequestValidationError, exc).errors()
        detail = [explain(dict(error), content_type) for error in errors]
        return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        http = cast(StarletteHTTPException, exc)  # registered for this class only
        # FastAPI answers a body it cannot decode (not UTF-8) with a 400 raised from the
        # decoding error. For us that is an invalid body like any other: 401 without a
        # valid key, else a 422 in the usual shape.
        if (
            http.status_code == 400
            and isinstance(exc.__cause__, ValueError)
            and request.url.path in protected
        ):
            error = validation_error(("body",), f"the body is not UTF-8 text: {JSON_HINT}")
            return await on_validation_error(request, error)
        hint = _ROUTING_HINTS.get(http.status_code)
        if hint is not None and http.detail == HTTPStatus(http.status_code).phrase:
            allow = (http.headers or {}).get("Allow", "another method")
            http = StarletteHTTPException(
                http.status_code, hint.format(allow=allow), headers=http.headers
            )
        return await http_exception_handler(request, http)

    async def on_database_unavailable(request: Request, exc: Exception) -> Response:
        return await http_exception_handler(request, database_unavailable())

    async def on_earlier_answer(request: Request, exc: Exception) -> Response:
        return cast(EarlierAnswer, exc).response  # registered for this class only

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug: Starlette logs it and re-raises it after sending this answer; the
        # answer is JSON in the same shape as every other error, not plain text.
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(DatabaseUnavailable, on_database_unavailable)
    app.add_exception_handler(EarlierAnswer, on_earlier_answer)
    app.add_exception_handler(Exception, on_unexpected)
