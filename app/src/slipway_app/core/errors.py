"""Exception handlers: every error is JSON, 5xx carry the request id and never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceUnavailable(Exception):
    """A dependency (``database`` or ``redis``) is down: 503 naming it."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(detail)
        self.dependency = dependency
        self.detail = detail


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"detail": "malformed JSON body"}, status_code=400)
    # Keep loc/msg/type; drop "input", which could echo a large or sensitive body back.
    detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


async def service_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceUnavailable)
    log.warning(
        "dependency unavailable", extra={"failed": exc.dependency, "error": str(exc.__cause__)}
    )
    return JSONResponse(
        {"detail": exc.detail, "failed": exc.dependency, "request_id": _request_id(request)},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    wrapped = ServiceUnavailable("database", "database unavailable, try again later")
    wrapped.__cause__ = exc
    return await service_unavailable(request, wrapped)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error", "request_id": _request_id(request)},
        status_code=500,
        headers={"x-request-id": _request_id(request) or ""},
    )


def register(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_exception)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServiceUnavailable, service_unavailable)
    for db_error in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.add_exception_handler(db_error, database_unavailable)
    app.add_exception_handler(Exception, internal_error)
