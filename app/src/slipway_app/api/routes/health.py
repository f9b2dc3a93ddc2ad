"""``/health/live`` (no I/O) and ``/health/ready`` (database, redis, migrations)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from slipway_app import __version__
from slipway_app.api.deps import EngineDep, GraphDep, RedisDep, SettingsDep
from slipway_app.core.readiness import readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live(settings: SettingsDep) -> dict[str, str]:
    """The process is up and serving, and which release it runs; touches nothing else.

    A deploy waits for the new release id here after a restart (app_restart)."""
    return {"status": "ok", "release_id": settings.release_id}


@router.get("/ready", responses={503: {"description": "a check failed; `failed` names it"}})
async def ready(
    settings: SettingsDep, engine: EngineDep, redis: RedisDep, graph: GraphDep
) -> JSONResponse:
    checks = await readiness(engine, redis, graph, settings.health_timeout)
    failed = [name for name, result in checks.items() if result.status == "fail"]
    body: dict[str, Any] = {
        "status": "fail" if failed else "ok",
        "failed": failed,
        "release_id": settings.release_id,
        "version": __version__,
        "checks": {name: result.as_dict() for name, result in checks.items()},
    }
    return JSONResponse(body, status_code=503 if failed else 200)
