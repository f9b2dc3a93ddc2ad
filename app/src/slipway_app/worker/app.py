"""The Celery app of the worker and beat processes (``celery -A slipway_app.worker.app``).

It includes the tasks, logs JSON and counts task outcomes in Redis. The web app never
imports it: it publishes through its own producer-only app (``celery_config.create_celery``).
"""

from __future__ import annotations

from typing import Any

import redis
from celery.signals import (
    setup_logging,
    task_failure,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
)

from slipway_app.core.config import get_settings
from slipway_app.core.logs import configure_logging
from slipway_app.worker import task_metrics
from slipway_app.worker.celery_config import create_celery

settings = get_settings()
celery_app = create_celery(settings, include_tasks=True)

_redis: redis.Redis | None = None


def _metrics_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_connect_timeout,
            socket_timeout=settings.redis_socket_timeout,
        )
    return _redis


@setup_logging.connect
def _json_logging(**_: Any) -> None:
    configure_logging(settings.worker_log_level, settings.release_id)


def _name(sender: Any, request: Any = None) -> str:
    name = getattr(sender, "name", None) or getattr(request, "task", None)
    return str(name or "unknown")


@task_success.connect
def _on_success(sender: Any = None, **_: Any) -> None:
    task_metrics.record(_metrics_client(), _name(sender), "success")


@task_failure.connect
def _on_failure(sender: Any = None, **_: Any) -> None:
    task_metrics.record(_metrics_client(), _name(sender), "failure")


@task_retry.connect
def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    task_metrics.record(_metrics_client(), _name(sender, request), "retry")


@task_rejected.connect
def _on_rejected(sender: Any = None, message: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    task_metrics.record(_metrics_client(), str(headers.get("task", "unknown")), "rejected")


@task_revoked.connect
def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    task_metrics.record(_metrics_client(), _name(sender, request), "revoked")
