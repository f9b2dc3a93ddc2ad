"""Readiness checks: PostgreSQL, Redis and the Alembic revision, each timed and bounded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from slipway_app.core.migrate import (
    ANCESTORS_QUERY,
    VERSION_QUERY,
    MigrationState,
    ScriptGraph,
    needs_lineage,
)

log = logging.getLogger(__name__)


@dataclass
class CheckResult:
    status: str  # "ok" | "fail" | "skipped"
    latency_ms: float = 0.0
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "latency_ms": self.latency_ms}
        if self.error:
            out["error"] = self.error
        out.update(self.info)
        return out


async def _timed(
    name: str, timeout: float, probe: Callable[[], Awaitable[dict[str, Any] | None]]
) -> CheckResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            info = await probe()
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except Exception as exc:
        log.warning("readiness check failed", extra={"check": name, "error": str(exc)})
        error = type(exc).__name__
    else:
        ms = round((time.perf_counter() - start) * 1000, 3)
        return CheckResult("ok", ms, info=info or {})
    ms = round((time.perf_counter() - start) * 1000, 3)
    return CheckResult("fail", ms, error=error)


async def check_database(
    engine: AsyncEngine, graph: ScriptGraph, timeout: float
) -> tuple[CheckResult, CheckResult]:
    """``database`` (connect + read the revision) and ``migrations`` (this release can serve
    on that revision: at its head, or ahead of it along the lineage; ``migration_status``)."""
    states: list[MigrationState] = []

    async def probe() -> None:
        # One round trip answers both: reachable, and which revision it is at. A second
        # (the lineage walk) only when the revision is one this release does not know.
        async with engine.connect() as conn:
            try:
                rows = await conn.execute(VERSION_QUERY)
                current = tuple(sorted(r[0] for r in rows))
            except ProgrammingError:  # no alembic_version table: never migrated
                await conn.rollback()
                current = ()
            ancestors: frozenset[str] = frozenset()
            if needs_lineage(current, graph):
                try:
                    walk = await conn.execute(ANCESTORS_QUERY, {"current": list(current)})
                    ancestors = frozenset(r[0] for r in walk)
                except ProgrammingError:  # no lineage table: nothing to place it with
                    await conn.rollback()
            states.append(MigrationState(current, graph, ancestors))

    db = await _timed("database", timeout, probe)
    if db.status != "ok":
        return db, CheckResult("skipped", error="database unreachable")
    state = states[0]
    info = {  # "status" is the check's own (ok/fail/skipped): the rule's answer gets its own key
        "current": ",".join(state.current) or None,
        "head": ",".join(state.heads),
        "revision_status": state.status,
    }
    problem = state.problem()
    if problem:
        return db, CheckResult("fail", error=problem, info=info)
    return db, CheckResult("ok", info=info)


async def check_redis(client: Redis, timeout: float) -> CheckResult:
    async def probe() -> None:
        await client.ping()

    return await _timed("redis", timeout, probe)


async def readiness(
    engine: AsyncEngine, redis: Redis, graph: ScriptGraph, timeout: float
) -> dict[str, CheckResult]:
    (db, migrations), red = await asyncio.gather(
        check_database(engine, graph, timeout), check_redis(redis, timeout)
    )
    return {"database": db, "redis": red, "migrations": migrations}
