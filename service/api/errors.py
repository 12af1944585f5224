"""How failures become HTTP answers: the 422 shape, the 503s, and the handlers that
put a missing key (401) before anything the body says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.errors import DatabaseUnavailable

__all__ = [
    "DATABASE_RETRY_AFTER",
    "SHUTDOWN_RETRY_AFTER",
    "EarlierAnswer",
    "database_unavailable",
    "install_error_handlers",
    "unauthorized",
    "validation_error",
]

# Seconds a client should wait after a 503 caused by the database (locked, full, gone).
DATABASE_RETRY_AFTER = 5
# After SIGTERM this instance takes no new work; another instance (or this one once
# restarted) will.
SHUTDOWN_RETRY_AFTER = 5

_UNAUTHORIZED = "missing or invalid X-API-Key"


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
        status_code=401, detail=_UNAUTHORIZED, headers={"WWW-Authenticate": "APIKey"}
    )


def database_unavailable() -> HTTPException:
    return HTTPException(
        status_code=503,
        detail="the database is unavailable; nothing was stored, retry later",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def install_error_handlers(
    app: FastAPI, settings: Settings, has_valid_key: Callable[[Settings, str | None], bool]
) -> None:
    protected = {"/send", "/send_async", "/send_batch"}
    default_handler = app.exception_handlers[RequestValidationError]

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        # FastAPI parses JSON before it runs dependencies, so a malformed body would
        # answer 422 before the key is checked. A caller without a valid key learns
        # nothing about our validation: 401 first.
        path = request.url.path
        needs_key = path in protected or path.startswith("/messages")
        if needs_key and not has_valid_key(settings, request.headers.get("x-api-key")):
            return JSONResponse(
                {"detail": _UNAUTHORIZED},
                status_code=401,
                headers={"WWW-Authenticate": "APIKey"},
            )
        handler: Callable[[Request, Exception], Awaitable[Response]] = default_handler  # type: ignore[assignment]
        return await handler(request, exc)

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

    async def on_database_unavailable(request: Request, exc: Exception) -> Response:
        return await http_exception_handler(request, database_unavailable())

    async def on_earlier_answer(request: Request, exc: Exception) -> Response:
        return cast(EarlierAnswer, exc).response  # registered for this class only

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(DatabaseUnavailable, on_database_unavailable)
    app.add_exception_handler(EarlierAnswer, on_earlier_answer)
