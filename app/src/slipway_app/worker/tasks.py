"""Celery tasks: run one job and store its result in PostgreSQL; purge old jobs."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from slipway_app.core.db import make_sync_engine
from slipway_app.models import Job, JobStatus
from slipway_app.worker import compute
from slipway_app.worker.app import celery_app, settings
from slipway_app.worker.celery_config import TASK_PURGE_JOBS, TASK_RUN_JOB

log = logging.getLogger(__name__)

_engine: tuple[int, Engine] | None = None


def engine() -> Engine:
    """One engine per process (prefork children must not share the parent's sockets)."""
    global _engine
    if _engine is None or _engine[0] != os.getpid():
        _engine = (os.getpid(), make_sync_engine(settings, pool_size=2, max_overflow=2))
    return _engine[1]


def _now() -> datetime:
    return datetime.now(UTC)


@celery_app.task(
    name=TASK_RUN_JOB,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=settings.celery_retry_backoff_max,
    retry_jitter=True,
    max_retries=settings.celery_max_retries,
)
def run_job(self: Task, job_id: str) -> str:
    """Compute job ``job_id``; idempotent, so a redelivered message is harmless."""
    jid = uuid.UUID(job_id)
    with engine().begin() as conn:
        row = conn.execute(
            update(Job)
            .where(Job.id == jid, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, started_at=_now())
            .returning(Job.kind, Job.params, Job.attempts)
        ).one_or_none()
    if row is None:
        status = None
        with engine().connect() as conn:
            status = conn.execute(select(Job.status).where(Job.id == jid)).scalar_one_or_none()
        log.info("job not runnable, skipping", extra={"job_id": job_id, "status": status})
        return str(status)
    kind, params, attempts = row
    log.info("job started", extra={"job_id": job_id, "kind": kind, "attempt": attempts})
    try:
        result: dict[str, Any] = compute.compute(kind, params)
    except (ValueError, KeyError, TypeError) as exc:
        _finish(jid, JobStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        log.warning("job failed", extra={"job_id": job_id, "error": str(exc)})
        raise
    _finish(jid, JobStatus.SUCCEEDED, result=result)
    log.info("job succeeded", extra={"job_id": job_id, "kind": kind})
    return JobStatus.SUCCEEDED.value


def _finish(
    jid: uuid.UUID,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with engine().begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == jid)
            .values(status=status, result=result, error=error, finished_at=_now())
        )


@celery_app.task(
    name=TASK_PURGE_JOBS,
    acks_late=True,
    autoretry_for=(DBAPIError,),
    retry_backoff=True,
    max_retries=3,
)
def purge_jobs(retention_days: int | None = None) -> int:
    """Delete finished jobs older than ``SLIPWAY_JOBS_RETENTION_DAYS``; returns the count."""
    days = retention_days or settings.jobs_retention_days
    cutoff = _now() - timedelta(days=days)
    with engine().begin() as conn:
        deleted = conn.execute(
            delete(Job).where(
                Job.created_at < cutoff,
                Job.status.in_([JobStatus.SUCCEEDED, JobStatus.FAILED]),
            )
        ).rowcount
    log.info("purged old jobs", extra={"deleted": deleted, "retention_days": days})
    return int(deleted or 0)
