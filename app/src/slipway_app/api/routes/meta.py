"""``/version`` and ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from slipway_app import __version__
from slipway_app.api.deps import RedisDep, SettingsDep
from slipway_app.core import metrics
from slipway_app.worker import task_metrics

router = APIRouter(tags=["meta"])


@router.get("/version")
async def version(settings: SettingsDep) -> dict[str, str]:
    return {"version": __version__, "release_id": settings.release_id, "env": settings.env}


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(settings: SettingsDep, redis: RedisDep) -> Response:
    """Prometheus exposition: HTTP metrics of every worker plus Celery task outcomes."""
    raw: dict[Any, Any] | None
    try:
        async with asyncio.timeout(settings.health_timeout):
            raw = await redis.hgetall(task_metrics.HASH_KEY)
    except Exception:
        raw = None  # exported as slipway_celery_task_metrics_up 0
    body = metrics.render(task_metrics.TaskOutcomeCollector(raw))
    return Response(body, media_type=metrics.CONTENT_TYPE)
