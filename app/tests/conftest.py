"""Fixtures: throwaway PostgreSQL + Redis (tools/test-services.sh) and a fresh database
migrated with the real Alembic migrations. Helpers live in slipway_testlib.py."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from slipway_app.core import migrate
from slipway_app.core.config import Settings, load_settings
from slipway_testlib import SERVICES


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Start (idempotently) the test PostgreSQL and Redis; their URLs."""
    proc = subprocess.run(
        [str(SERVICES), "start"], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"tools/test-services.sh start failed:\n{proc.stderr[-2000:]}")
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return env


@contextlib.contextmanager
def _migrated_database(services: dict[str, str], prefix: str) -> Iterator[str]:
    """A new database, migrated to head with the real Alembic migrations; dropped after."""
    admin = services["SLIPWAY_TEST_DATABASE_URL"]
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_dsn = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate.upgrade(load_settings(env="test", database_url=url))
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(services: dict[str, str]) -> Iterator[str]:
    """The session's database, migrated to head; shared, so leave its revision alone."""
    with _migrated_database(services, "slipway_test") as url:
        yield url


@pytest.fixture
def fresh_database_url(services: dict[str, str]) -> Iterator[str]:
    """A database of this test's own, migrated to head: for tests that move alembic_version."""
    with _migrated_database(services, "slipway_fresh") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(services: dict[str, str]) -> str:
    """Redis database 1 of the test server, emptied once per session."""
    import redis

    url = services["SLIPWAY_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/1"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def make_settings(database_url: str, redis_url: str) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "database_url": database_url,
            "redis_url": redis_url,
            "release_id": "test-release",
            "access_log": False,
        }
        values.update(overrides)
        return load_settings(**values)

    return factory
