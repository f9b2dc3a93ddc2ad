"""Open and close the app's connections: SQLAlchemy engine, Redis pool, Celery producer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from slipway_app.core.config import Settings, redact_url
from slipway_app.core.db import make_async_engine, make_sessionmaker
from slipway_app.core.migrate import script_graph
from slipway_app.core.readiness import readiness
from slipway_app.worker.celery_config import create_celery

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_async_engine(settings)
    redis = Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        max_connections=64,
    )
    celery = create_celery(settings)
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.redis = redis
    app.state.celery = celery
    app.state.migration_graph = script_graph()
    # Warm up before serving: one readiness round opens the first PostgreSQL connection
    # (TCP, TLS, SCRAM) and the first Redis one, so that a fresh worker's first request, a
    # load balancer's readiness probe among them, finds them open in the pools instead of
    # paying for them inside its 2 s budget. Bounded by that same budget; a dependency that
    # is down is logged and left to the readiness endpoint, and the worker serves anyway
    # (liveness does not depend on it).
    warm = await readiness(engine, redis, app.state.migration_graph, settings.health_timeout)
    log.info(
        "app started",
        extra={
            "env": settings.env,
            "database": redact_url(settings.database_url),
            "redis": redact_url(settings.redis_url),
            "warm_up": {name: check.status for name, check in warm.items()},
        },
    )
    try:
        yield
    finally:
        celery.close()
        await redis.aclose()
        await engine.dispose()
        log.info("app stopped")
