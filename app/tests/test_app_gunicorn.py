"""The app under real Gunicorn with several Uvicorn workers: /metrics counts every request
exactly once whichever worker served it or answers the scrape (multiprocess mode)."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from slipway_app.core.config import Settings
from slipway_testlib import PYTHON, free_port, service_env, start_process, stop_process, wait_until

pytestmark = pytest.mark.services

N_REQUESTS = 60
WORKERS = 3
SAMPLE = re.compile(
    r'^slipway_http_requests_total\{method="GET",route="/version",status="200"\} (\S+)$', re.M
)


def _version_count(text: str) -> float:
    values = [float(v) for v in SAMPLE.findall(text)]
    assert len(values) <= 1, "one aggregated sample per label set"
    return values[0] if values else 0.0


def test_metrics_sum_across_gunicorn_workers(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    port = free_port()
    metrics_dir = tmp_path / "prom"
    env = service_env(
        SLIPWAY_ENV="test",
        SLIPWAY_DATABASE_URL=settings.database_url,
        SLIPWAY_REDIS_URL=settings.redis_url,
        SLIPWAY_BIND=f"127.0.0.1:{port}",
        SLIPWAY_WORKERS=str(WORKERS),
        SLIPWAY_RELEASE_ID="gunicorn-test",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    log = tmp_path / "gunicorn.log"
    args = [PYTHON, "-m", "gunicorn", "-c", "python:slipway_app.gunicorn_conf"]
    proc = start_process([*args, "slipway_app.main:app"], env, log)
    base = f"http://127.0.0.1:{port}"
    try:

        def live() -> bool:
            if proc.poll() is not None:
                raise AssertionError(log.read_text()[-3000:])
            try:
                return httpx.get(f"{base}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(live, 90, "gunicorn serving")  # generous bound: CI runs VMs beside it
        # Every worker must be up before traffic, so the requests spread over all of them.
        wait_until(
            lambda: log.read_text().count("Application startup complete") >= WORKERS,
            90,
            "all workers started",
        )

        def one(_: int) -> int:
            # A new connection per request: the kernel hands them to different workers.
            with httpx.Client(timeout=5) as client:
                return client.get(f"{base}/version").status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(one, range(N_REQUESTS)))
        assert statuses == [200] * N_REQUESTS

        for _ in range(6):
            with httpx.Client(timeout=5) as client:
                r = client.get(f"{base}/metrics")
            assert r.status_code == 200
            assert _version_count(r.text) == N_REQUESTS
        served_by = {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}
        assert len(served_by) >= 2, f"requests not spread over workers: {served_by}"
        ready = httpx.get(f"{base}/health/ready", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["release_id"] == "gunicorn-test"
        assert ready.headers["x-request-id"]
    finally:
        stop_process(proc)
    text = log.read_text()
    assert '"logger": "gunicorn.error"' in text  # the server's own log lines are JSON too
    assert "Traceback" not in text
