"""Builds the FastAPI app; ``slipway_app.main:app`` is what Gunicorn/Uvicorn serve."""

from __future__ import annotations

from fastapi import FastAPI

from slipway_app import __version__
from slipway_app.api.router import api_router
from slipway_app.core import errors
from slipway_app.core.config import Settings, get_settings
from slipway_app.core.lifespan import lifespan
from slipway_app.core.logs import configure_logging
from slipway_app.core.middleware import BodySizeLimitMiddleware, RequestContextMiddleware


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    public_docs = settings.env != "prod"
    app = FastAPI(
        title="slipway-app",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if public_docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if public_docs else None,
    )
    app.state.settings = settings
    errors.register(app)
    # add_middleware wraps: the last one added runs first (outermost).
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, access_log_enabled=settings.access_log)
    app.include_router(api_router)
    return app


def _app_from_environment() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.release_id)
    return create_app(settings)


def __getattr__(name: str) -> FastAPI:
    """``slipway_app.main:app`` is built on first access, so importing ``create_app``
    (tests, tools) reads no environment and configures no logging."""
    if name == "app":
        globals()["app"] = built = _app_from_environment()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
