"""JSON logs on stdout for the app, Gunicorn, Uvicorn and Celery.

Every record carries ``request_id`` (inside an HTTP request) or ``task_id``/``task_name``
(inside a Celery task) when there is one, plus ``release_id``.
"""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

JSON_FORMATTER = "pythonjsonlogger.json.JsonFormatter"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAME = {"levelname": "level", "asctime": "time", "name": "logger"}


class ContextFilter(logging.Filter):
    """Adds the current request id, Celery task id and the release id to each record."""

    def __init__(self, release_id: str = "dev") -> None:
        super().__init__()
        self.release_id = release_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.release_id = self.release_id
        record.__dict__.pop("color_message", None)  # Uvicorn's ANSI copy of the message
        request_id = request_id_var.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        if not hasattr(record, "task_id"):
            task = _current_task()
            if task is not None:
                record.task_id = task.request.id
                record.task_name = task.name
        return True


def _current_task() -> Any:
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover
        return None
    task = current_task
    if task is None or not getattr(task, "request", None) or task.request.id is None:
        return None
    return task


def logging_dict(level: str = "INFO", release_id: str = "dev") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; Gunicorn takes it as ``logconfig_dict``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter, "release_id": release_id}},
        "formatters": {
            "json": {
                "()": JSON_FORMATTER,
                "fmt": JSON_FORMAT,
                "rename_fields": RENAME,
                "datefmt": "%Y-%m-%dT%H:%M:%S%z",
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            # Gunicorn's own loggers (and Uvicorn's, which UvicornWorker points at the same
            # handlers) speak the same JSON. The per-request access line comes from our
            # middleware ("slipway.access": it has the request id and route), so the
            # server's own access lines are kept quiet below WARNING.
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["stdout"], "propagate": False},
            "uvicorn": {"level": level, "handlers": ["stdout"], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "uvicorn.access": {"level": "WARNING", "handlers": ["stdout"], "propagate": False},
            "celery": {"level": level},
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure_logging(level: str = "INFO", release_id: str = "dev") -> None:
    logging.config.dictConfig(logging_dict(level, release_id))
