"""``POST /api/jobs`` enqueues a job on Celery; ``GET /api/jobs/{job_id}`` reads it back."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import delete
from starlette.concurrency import run_in_threadpool

from slipway_app.api.deps import CeleryDep, SessionDep
from slipway_app.core import metrics
from slipway_app.core.errors import ServiceUnavailable
from slipway_app.models import Job, JobStatus
from slipway_app.schemas import QUEUE_FOR_KIND, JobIn, JobOut
from slipway_app.worker.celery_config import TASK_RUN_JOB

# The full prefix lives on the router so route.path is the whole template (metrics label).
router = APIRouter(prefix="/api/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed JSON"},
    413: {"description": "body too large"},
    503: {"description": "database or redis unavailable; `failed` names it"},
}


def _out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=_ERRORS)
async def submit_job(
    payload: JobIn, session: SessionDep, celery: CeleryDep, response: Response
) -> JobOut:
    queue = QUEUE_FOR_KIND[payload.kind]
    job = Job(
        id=uuid.uuid4(),
        kind=payload.kind,
        queue=queue,
        status=JobStatus.QUEUED.value,
        params=payload.model_dump(exclude={"kind"}),
        attempts=0,
        created_at=datetime.now(UTC),
    )
    session.add(job)
    await session.commit()
    job_id = str(job.id)
    try:
        await run_in_threadpool(
            celery.send_task, TASK_RUN_JOB, args=[job_id], task_id=job_id, queue=queue, retry=False
        )
    except (KombuOperationalError, RedisError, OSError) as exc:
        await session.execute(delete(Job).where(Job.id == job.id))
        await session.commit()
        raise ServiceUnavailable(
            "redis", "job queue (redis) unavailable, job not accepted; try again later"
        ) from exc
    metrics.JOBS_SUBMITTED.labels(payload.kind).inc()
    log.info("job submitted", extra={"job_id": job_id, "kind": payload.kind, "queue": queue})
    response.headers["Location"] = f"/api/jobs/{job_id}"
    return _out(job)


@router.get("/{job_id}", responses={404: {"description": "no such job"}})
async def get_job(job_id: uuid.UUID, session: SessionDep) -> JobOut:
    job = await session.get(Job, job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} not found")
    return _out(job)
