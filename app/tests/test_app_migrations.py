"""Expand/contract readiness: the rule (``migration_status``), the lineage table that
``migrate.upgrade()`` fills, and what /health/ready and ``slipway-app migrate current``
answer at head, behind, ahead (a newer release migrated) and at an unknown revision."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import psycopg
import pytest
from slipway_app.core import migrate
from slipway_app.core.config import Settings
from slipway_app.core.db import make_async_engine
from slipway_app.core.migrate import ScriptGraph, migration_status
from slipway_app.core.readiness import check_database
from slipway_testlib import PYTHON, app_client, service_env

SettingsFactory = Callable[..., Settings]

LINEAR = ScriptGraph(heads=("0002",), parents={"0001": (), "0002": ("0001",)})


def _psql(url: str, *statements: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        for sql in statements:
            cur = conn.execute(sql)
            if cur.description:
                rows = cur.fetchall()
    return rows


def _ahead(url: str, head: str = "0001") -> None:
    """What a newer release's `migrate upgrade` leaves: its revision, its lineage rows."""
    _psql(
        url,
        "INSERT INTO slipway_revision_lineage (revision, down_revision) "
        f"VALUES ('ffff', ARRAY['{head}'])",
        "UPDATE alembic_version SET version_num = 'ffff'",
    )


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "slipway_app.cli", "migrate", *args],
        env=service_env(SLIPWAY_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the rule, no database --------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "ancestors", "expected"),
    [
        (("0002",), frozenset(), "at-head"),
        ((), frozenset(), "behind"),
        (("0001",), frozenset(), "behind"),
        (("ffff",), frozenset({"ffff", "0002", "0001"}), "ahead"),
        (("ffff",), frozenset({"ffff", "0001"}), "unknown"),  # a sibling of 0002
        (("eeee",), frozenset(), "unknown"),
    ],
)
def test_migration_status(current: tuple[str, ...], ancestors: frozenset[str], expected: str):
    assert migration_status(current, LINEAR, ancestors) == expected


def test_script_graph_is_the_wheel() -> None:
    graph = migrate.script_graph()
    assert graph.heads == ("0001",)
    assert graph.parents == {"0001": ()}


# --- against the real PostgreSQL --------------------------------------------------------


@pytest.mark.services
def test_upgrade_records_lineage_and_downgrade_keeps_it(fresh_database_url: str) -> None:
    rows = _psql(
        fresh_database_url,
        "SELECT revision, down_revision, recorded_at IS NOT NULL FROM slipway_revision_lineage",
    )
    assert rows == [("0001", [], True)]
    settings = Settings(env="test", database_url=fresh_database_url)
    migrate.upgrade(settings)  # again: an upsert, no error, no duplicate
    migrate.downgrade(settings, "base")
    after = _psql(fresh_database_url, "SELECT revision FROM slipway_revision_lineage")
    assert after == [("0001",)]
    assert migrate.state(settings).status == "behind"


@pytest.mark.services
def test_upgrade_records_the_lineage_before_the_revision_moves(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running older release reads the lineage as soon as alembic_version changes."""
    _psql(fresh_database_url, "DELETE FROM slipway_revision_lineage")
    migrate.downgrade(Settings(env="test", database_url=fresh_database_url), "base")
    seen: list[list[tuple[object, ...]]] = []
    real = migrate.command.upgrade

    def upgrade(cfg: object, revision: str) -> None:
        seen.append(_psql(fresh_database_url, "SELECT revision FROM slipway_revision_lineage"))
        real(cfg, revision)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate.command, "upgrade", upgrade)
    migrate.upgrade(Settings(env="test", database_url=fresh_database_url))
    assert seen == [[("0001",)]]


@pytest.mark.services
@pytest.mark.anyio
async def test_ready_at_head_and_behind(
    make_settings: SettingsFactory, fresh_database_url: str
) -> None:
    settings = make_settings(database_url=fresh_database_url)
    async with app_client(settings) as c:
        r = await c.get("/health/ready")
        assert r.status_code == 200, r.text
        mig = r.json()["checks"]["migrations"]
        assert (mig["status"], mig["revision_status"]) == ("ok", "at-head")
        migrate.downgrade(settings, "base")
        r = await c.get("/health/ready")
    assert r.status_code == 503 and r.json()["failed"] == ["migrations"]
    mig = r.json()["checks"]["migrations"]
    assert (mig["current"], mig["head"], mig["revision_status"]) == (None, "0001", "behind")
    assert mig["error"] == "database is behind this release: run `slipway-app migrate upgrade`"


@pytest.mark.services
@pytest.mark.anyio
async def test_behind_at_an_earlier_revision(
    make_settings: SettingsFactory, fresh_database_url: str
) -> None:
    """This wheel has one revision, so a release with 0002 on top plays the newer release."""
    engine = make_async_engine(make_settings(database_url=fresh_database_url))
    try:
        db, mig = await check_database(engine, LINEAR, timeout=2)
    finally:
        await engine.dispose()
    assert db.status == "ok"
    assert (mig.status, mig.info["current"], mig.info["head"]) == ("fail", "0001", "0002")
    assert mig.info["revision_status"] == "behind"


@pytest.mark.services
@pytest.mark.anyio
async def test_ready_when_ahead_along_the_lineage(
    make_settings: SettingsFactory, fresh_database_url: str
) -> None:
    _ahead(fresh_database_url)
    async with app_client(make_settings(database_url=fresh_database_url)) as c:
        one = await c.get("/health/ready")
        # Two newer releases in a row: ffff -> fffe -> 0001.
        _psql(
            fresh_database_url,
            "UPDATE slipway_revision_lineage SET down_revision = ARRAY['fffe'] "
            "WHERE revision = 'ffff'",
            "INSERT INTO slipway_revision_lineage (revision, down_revision) "
            "VALUES ('fffe', ARRAY['0001'])",
        )
        two = await c.get("/health/ready")
    for r in (one, two):
        assert r.status_code == 200, r.text
        mig = r.json()["checks"]["migrations"]
        assert (mig["status"], mig["current"], mig["head"]) == ("ok", "ffff", "0001")
        assert mig["revision_status"] == "ahead"


@pytest.mark.services
@pytest.mark.anyio
async def test_not_ready_at_an_unknown_revision(
    make_settings: SettingsFactory, fresh_database_url: str
) -> None:
    _psql(fresh_database_url, "UPDATE alembic_version SET version_num = 'eeee'")
    async with app_client(make_settings(database_url=fresh_database_url)) as c:
        unknown = await c.get("/health/ready")
        # A lineage that leads elsewhere, and then no lineage table at all (an older wheel
        # migrated this database): neither places eeee after 0001.
        _psql(
            fresh_database_url,
            "INSERT INTO slipway_revision_lineage VALUES ('eeee', ARRAY['dddd'], now())",
        )
        elsewhere = await c.get("/health/ready")
        _psql(fresh_database_url, "DROP TABLE slipway_revision_lineage")
        no_table = await c.get("/health/ready")
    for r in (unknown, elsewhere, no_table):
        assert r.status_code == 503 and r.json()["failed"] == ["migrations"], r.text
        mig = r.json()["checks"]["migrations"]
        assert mig["revision_status"] == "unknown"
        assert mig["error"] == (
            "database is at eeee, which does not descend from this release's head 0001"
        )


@pytest.mark.services
def test_cli_exit_codes(fresh_database_url: str) -> None:
    url = fresh_database_url

    def current() -> tuple[int, str, dict[str, object]]:
        text = _cli(url, "current")
        as_json = _cli(url, "current", "--json")
        assert text.returncode == as_json.returncode, (text.stderr, as_json.stderr)
        return text.returncode, text.stdout.strip(), json.loads(as_json.stdout)

    assert current() == (
        0,
        "current=0001 head=0001 status=at-head",
        {"current": ["0001"], "heads": ["0001"], "status": "at-head"},
    )
    _ahead(url)
    assert current() == (
        4,
        "current=ffff head=0001 status=ahead",
        {"current": ["ffff"], "heads": ["0001"], "status": "ahead"},
    )
    up = _cli(url, "upgrade")  # an older release's deploy step: leaves the newer schema be
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "upgrade: unchanged from=ffff to=ffff head=0001 status=ahead"
    _psql(url, "UPDATE alembic_version SET version_num = 'eeee'")
    assert current() == (
        5,
        "current=eeee head=0001 status=unknown",
        {"current": ["eeee"], "heads": ["0001"], "status": "unknown"},
    )
    up = _cli(url, "upgrade")
    assert up.returncode == 5 and "does not descend from this release's head 0001" in up.stderr
    _psql(url, "UPDATE alembic_version SET version_num = '0001'")
    assert _cli(url, "downgrade", "base").returncode == 0
    assert current() == (
        3,
        "current=none head=0001 status=behind",
        {"current": [], "heads": ["0001"], "status": "behind"},
    )
    assert _cli(url, "upgrade").returncode == 0
    assert current()[0] == 0
    error = _cli("postgresql://u:p@127.0.0.1:1/x", "current", "--json")
    assert error.returncode == 1 and "database error" in error.stderr
