"""Celery configuration and the app factory: Redis broker, queues ``default`` and ``gpu``,
late acks, beat schedule, task names. The web app (to publish) and the worker both use it.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from slipway_app.core.config import Settings

TASK_RUN_JOB = "slipway.run_job"
TASK_PURGE_JOBS = "slipway.purge_jobs"


def transport_options(settings: Settings) -> dict[str, Any]:
    vt = settings.celery_visibility_timeout
    return {
        # A message a dead worker had taken comes back after this many seconds.
        "visibility_timeout": vt,
        # Sweep for such messages often enough that a short timeout (tests) is honoured.
        "unacked_restore_interval": max(1, min(10, vt // 5)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": 30,
        # Publishing (POST /api/jobs) gives up fast when Redis is down.
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    soft_limit = max(1, settings.celery_task_time_limit - 30)
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport_options(settings),
        "broker_connection_timeout": settings.redis_connect_timeout,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,  # results live in PostgreSQL, written by the task
        "task_default_queue": "default",
        "task_queues": [Queue("default"), Queue("gpu")],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": settings.celery_task_time_limit,
        "task_soft_time_limit": min(soft_limit, settings.celery_task_time_limit),
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "worker_soft_shutdown_timeout": settings.celery_soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": False,  # an idle worker stops at once
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        "beat_schedule_filename": settings.beat_schedule_file,
        "beat_schedule": {
            "purge-old-jobs": {
                "task": TASK_PURGE_JOBS,
                "schedule": float(settings.purge_interval_seconds),
                "options": {"queue": "default", "expires": settings.purge_interval_seconds},
            }
        },
        "timezone": "UTC",
    }


def create_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    """A Celery app for ``settings``; the web app only publishes, so it skips the tasks."""
    app = Celery("slipway", include=["slipway_app.worker.tasks"] if include_tasks else [])
    app.conf.update(celery_config(settings))
    app.conf.slipway_settings = settings
    return app
