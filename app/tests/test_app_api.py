"""The API in process against the real PostgreSQL and Redis (database migrated for real)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from fastapi import FastAPI
from slipway_app.core.config import Settings
from slipway_app.main import create_app
from slipway_testlib import TcpProxy, app_client, free_port, wait_until

pytestmark = [pytest.mark.services, pytest.mark.anyio]

SettingsFactory = Callable[..., Settings]


def _with_host(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    creds = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return parts._replace(netloc=f"{creds}127.0.0.1:{port}").geturl()


async def test_live_and_version(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as c:
        live = await c.get("/health/live")
        version = await c.get("/version")
    assert live.status_code == 200
    assert live.json() == {"status": "ok", "release_id": version.json()["release_id"]}
    assert version.json()["release_id"] == "test-release"
    assert version.json()["version"]


async def test_ready_ok_reports_each_check(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as c:
        r = await c.get("/health/ready")
    body = r.json()
    assert r.status_code == 200, body
    assert body["status"] == "ok" and body["failed"] == []
    assert body["release_id"] == "test-release" and body["version"]
    assert set(body["checks"]) == {"database", "redis", "migrations"}
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert isinstance(check["latency_ms"], float)
    assert body["checks"]["migrations"]["current"] == body["checks"]["migrations"]["head"]


async def test_startup_opens_database_and_redis_connections_before_serving(
    make_settings: SettingsFactory,
) -> None:
    """A fresh worker's first request must not pay for its first connections: the lifespan
    leaves one PostgreSQL and one Redis connection idle in the pools before it serves."""
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        assert app.state.engine.sync_engine.pool.checkedin() == 1
        assert len(app.state.redis.connection_pool._available_connections) == 1


async def test_startup_with_database_down_still_serves(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        database_url=_with_host(make_settings().database_url, free_port()), health_timeout=1.0
    )
    app = create_app(settings)
    start = time.monotonic()
    async with app.router.lifespan_context(app):
        started = time.monotonic() - start
        assert app.state.engine.sync_engine.pool.checkedin() == 0
    assert started < 3


async def test_ready_503_names_database_when_unreachable(make_settings: SettingsFactory) -> None:
    settings = make_settings(database_url=_with_host(make_settings().database_url, free_port()))
    async with app_client(settings) as c:
        start = time.monotonic()
        r = await c.get("/health/ready")
        elapsed = time.monotonic() - start
        live = await c.get("/health/live")
        job = await c.post("/api/jobs", json={"kind": "text", "text": "x"})
    assert r.status_code == 503
    assert r.json()["failed"] == ["database"]
    assert r.json()["checks"]["migrations"]["status"] == "skipped"
    assert "Traceback" not in r.text
    assert elapsed < 5
    assert live.status_code == 200
    assert job.status_code == 503 and job.json()["failed"] == "database"


async def test_ready_503_names_migrations_when_behind(
    make_settings: SettingsFactory, services: dict[str, str]
) -> None:
    admin = services["SLIPWAY_TEST_DATABASE_URL"].replace("+psycopg", "")
    name = f"slipway_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = services["SLIPWAY_TEST_DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}"
        async with app_client(make_settings(database_url=url)) as c:
            r = await c.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["failed"] == ["migrations"]
        assert r.json()["checks"]["migrations"]["current"] is None
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_post_jobs_503_names_redis_when_unreachable(make_settings: SettingsFactory) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with app_client(settings) as c:
        start = time.monotonic()
        r = await c.post("/api/jobs", json={"kind": "text", "text": "hello"})
        elapsed = time.monotonic() - start
        ready = await c.get("/health/ready")
        metrics = await c.get("/metrics")
    assert r.status_code == 503, r.text
    assert r.json()["failed"] == "redis"
    assert "redis" in r.json()["detail"]
    assert elapsed < 5
    assert ready.status_code == 503 and ready.json()["failed"] == ["redis"]
    assert metrics.status_code == 200
    assert "slipway_celery_task_metrics_up 0.0" in metrics.text


async def test_submit_then_read_job(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as c:
        r = await c.post("/api/jobs", json={"kind": "text", "text": "a b c", "iterations": 5})
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/api/jobs/{job['id']}"
        got = await c.get(f"/api/jobs/{job['id']}")
        gpu = await c.post("/api/jobs", json={"kind": "gpu", "text": "x", "iterations": 2.0})
    assert got.status_code == 200
    assert got.json()["status"] == "queued" and got.json()["kind"] == "text"
    assert gpu.json()["queue"] == "gpu"


async def test_bad_input_is_clean_json(make_settings: SettingsFactory) -> None:
    settings = make_settings(max_body_bytes=4096)
    headers = {"content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b'{"kind":"text","text":"' + b"x" * 1000

    async with app_client(settings) as c:
        malformed = await c.post("/api/jobs", content=b'{"kind": "text", ', headers=headers)
        too_big = await c.post("/api/jobs", content=b"x" * 5000, headers=headers)
        streamed = await c.post("/api/jobs", content=chunks(), headers=headers)
        invalid = await c.post("/api/jobs", json={"kind": "text", "text": "", "iterations": 0})
        unknown = await c.get(f"/api/jobs/{uuid.uuid4()}")
        not_uuid = await c.get("/api/jobs/not-a-uuid")
        no_route = await c.get("/nope")
    assert malformed.status_code == 400 and malformed.json() == {"detail": "malformed JSON body"}
    assert too_big.status_code == 413 and "4096" in too_big.json()["detail"]
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413, streamed.text
    assert invalid.status_code == 422
    assert all("input" not in e for e in invalid.json()["detail"])
    assert unknown.status_code == 404 and "not found" in unknown.json()["detail"]
    assert not_uuid.status_code == 422
    assert no_route.status_code == 404 and no_route.json() == {"detail": "Not Found"}


async def test_job_schema_requires_what_validation_requires(
    make_settings: SettingsFactory,
) -> None:
    """The published OpenAPI schema must not accept a body the endpoint rejects (an API
    fuzzer found ``{"seconds": 0}`` schema-valid but 422 while ``kind`` had a default)."""
    from slipway_app.main import create_app

    schemas = create_app(make_settings()).openapi()["components"]["schemas"]
    for name in ("TextJob", "GpuJob", "SleepJob"):
        assert "kind" in schemas[name]["required"], name
    async with app_client(make_settings()) as c:
        no_kind = await c.post("/api/jobs", json={"seconds": 0})
    assert no_kind.status_code == 422
    assert "kind" in no_kind.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # Found by an API fuzzer: each was accepted (202) or crashed the insert (500).
        (b'{"kind": "sleep", "seconds": false}', "seconds"),
        (b'{"kind": "text", "text": "a", "iterations": "5"}', "iterations"),
        (b'{"kind": "text", "text": "a", "iterations": 5.5}', "iterations"),
        (b'{"kind": "text", "text": "a", "iterations": true}', "iterations"),
        (b'{"kind": "gpu", "text": "a\\u0000b"}', "text"),
        (b'{"kind": "gpu", "text": "\\udb8e\\udf9e x \\ud9a6"}', "text"),
    ],
)
async def test_unstorable_or_coerced_input_is_422(
    make_settings: SettingsFactory, body: bytes, field: str
) -> None:
    headers = {"content-type": "application/json"}
    async with app_client(make_settings()) as c:
        r = await c.post("/api/jobs", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == field


async def test_unhandled_error_is_json_500_without_traceback(
    make_settings: SettingsFactory,
) -> None:
    async with app_client(make_settings()) as c:
        app: FastAPI = c._transport.app  # type: ignore[attr-defined]

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("secret internals")

        r = await c.get("/boom", headers={"x-request-id": "req-500"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error", "request_id": "req-500"}
    assert "secret internals" not in r.text


async def test_request_id_echoed_or_generated(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as c:
        given = await c.get("/health/live", headers={"x-request-id": "abc-123.x"})
        bad = await c.get("/health/live", headers={"x-request-id": "bad id; drop"})
        none = await c.get("/health/live")
    assert given.headers["x-request-id"] == "abc-123.x"
    assert bad.headers["x-request-id"] != "bad id; drop"
    assert len(bad.headers["x-request-id"]) == 32
    assert none.headers["x-request-id"] != bad.headers["x-request-id"]


async def test_access_log_is_json_with_request_id(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import logging

    from slipway_app.core.logs import configure_logging

    configure_logging("INFO", "test-release")
    try:
        async with app_client(make_settings(access_log=True)) as c:
            await c.get("/api/jobs/" + str(uuid.uuid4()), headers={"x-request-id": "log-1"})
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("logger") == "slipway.access"]
    assert access, lines
    entry = access[-1]
    assert entry["request_id"] == "log-1"
    assert entry["method"] == "GET" and entry["status"] == 404
    assert entry["route"] == "/api/jobs/{job_id}"
    assert entry["path"].startswith("/api/jobs/")
    assert isinstance(entry["duration_ms"], float)
    assert entry["release_id"] == "test-release"


async def test_metrics_use_route_template(make_settings: SettingsFactory) -> None:
    async with app_client(make_settings()) as c:
        for _ in range(3):
            await c.get(f"/api/jobs/{uuid.uuid4()}")
        text = (await c.get("/metrics")).text
    assert 'route="/api/jobs/{job_id}",status="404"' in text
    assert "slipway_celery_task_metrics_up 1.0" in text
    assert "/api/jobs/0" not in text.replace("{job_id}", "")


async def test_database_outage_and_recovery(
    make_settings: SettingsFactory, database_url: str
) -> None:
    target = urlsplit(database_url)
    proxy = TcpProxy("127.0.0.1", int(target.port or 5432))
    proxy.start()
    try:
        settings = make_settings(database_url=_with_host(database_url, proxy.port))
        async with app_client(settings) as c:
            assert (await c.get("/health/ready")).status_code == 200
            proxy.stop()
            down = await c.get("/health/ready")
            assert down.status_code == 503 and down.json()["failed"] == ["database"]
            assert (await c.get("/health/live")).status_code == 200
            proxy.start()
            deadline = time.monotonic() + 10
            status = 0
            while time.monotonic() < deadline and status != 200:
                status = (await c.get("/health/ready")).status_code
            assert status == 200
            r = await c.post("/api/jobs", json={"kind": "text", "text": "back"})
            assert r.status_code == 202
    finally:
        proxy.stop()


@pytest.fixture
def private_redis(tmp_path: Any) -> Any:
    """A password-less redis-server on a free port that the test can stop and restart."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    args = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]

    class Server:
        proc: subprocess.Popen[bytes] | None = None
        url = f"redis://127.0.0.1:{port}/0"

        def start(self) -> None:
            import redis

            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
            client = redis.Redis(port=port, socket_connect_timeout=0.5)

            def pong() -> bool:
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            wait_until(pong, 10, "private redis")

        def stop(self) -> None:
            if self.proc is not None:
                self.proc.terminate()
                self.proc.wait(timeout=10)
                self.proc = None

    server = Server()
    server.start()
    yield server
    server.stop()


async def test_redis_outage_and_recovery(
    make_settings: SettingsFactory, private_redis: Any
) -> None:
    settings = make_settings(redis_url=private_redis.url)
    payload = {"kind": "text", "text": "hello"}
    async with app_client(settings) as c:
        assert (await c.post("/api/jobs", json=payload)).status_code == 202
        private_redis.stop()
        down = await c.post("/api/jobs", json=payload)
        assert down.status_code == 503 and down.json()["failed"] == "redis"
        ready = await c.get("/health/ready")
        assert ready.json()["failed"] == ["redis"]
        private_redis.start()
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline and status != 202:
            status = (await c.post("/api/jobs", json=payload)).status_code
        assert status == 202
        assert (await c.get("/health/ready")).status_code == 200
