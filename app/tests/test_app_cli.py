"""The `slipway-app` commands a deploy runs, as subprocesses, and the wheel's contents."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest
from slipway_testlib import PYTHON, REPO, service_env

CLI = [PYTHON, "-m", "slipway_app.cli"]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=service_env(**env), capture_output=True, text=True, timeout=60
    )


def test_check_config_ok_and_prod_refusal() -> None:
    ok = run(["check-config", "--json"], SLIPWAY_SECRET_KEY="s" * 40)
    assert ok.returncode == 0, ok.stderr
    assert '"SLIPWAY_SECRET_KEY": "***"' in ok.stdout
    bad = run(["check-config"], SLIPWAY_ENV="prod", SLIPWAY_SECRET_KEY="changethis")
    assert bad.returncode == 2
    assert "SLIPWAY_SECRET_KEY" in bad.stderr and "SLIPWAY_DATABASE_URL" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_serve_refuses_bad_prod_config() -> None:
    bad = run(["serve"], SLIPWAY_ENV="prod")
    assert bad.returncode == 2 and "SLIPWAY_SECRET_KEY is not set" in bad.stderr


def test_migrate_heads_needs_no_settings(tmp_path: Path) -> None:
    """Ansible runs it as root right after installing a release, before any env file: no
    SLIPWAY_* at all, a bare working directory; even a refused prod config does not matter."""
    env = service_env()
    env.pop("HOME", None)
    assert not any(k.startswith("SLIPWAY_") for k in env)
    heads = subprocess.run(
        [*CLI, "migrate", "heads"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert heads.returncode == 0, heads.stderr
    assert heads.stdout == "0001\n"
    prod = run(["migrate", "heads"], SLIPWAY_ENV="prod")  # settings would refuse this
    assert prod.returncode == 0 and prod.stdout == "0001\n", prod.stderr


def test_version_reads_the_release_file(tmp_path: Path) -> None:
    f = tmp_path / "release.json"
    f.write_text('{"id": "0.1.0-abcdef012345", "version": "0.1.0"}')
    out = run(["version"], SLIPWAY_RELEASE_FILE=str(f))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["release_id"] == "0.1.0-abcdef012345"
    dev = run(["version"], SLIPWAY_RELEASE_FILE=str(tmp_path / "absent.json"))
    assert json.loads(dev.stdout)["release_id"] == "dev"


@pytest.mark.services
def test_migrate_commands_on_a_fresh_database(services: dict[str, str]) -> None:
    admin = services["SLIPWAY_TEST_DATABASE_URL"]
    name = f"slipway_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        before = run(["migrate", "current"], SLIPWAY_DATABASE_URL=url)
        assert before.returncode == 3, before.stderr
        assert "status=behind" in before.stdout
        up = run(["migrate", "upgrade"], SLIPWAY_DATABASE_URL=url)
        assert up.returncode == 0 and "upgrade: changed from=none to=0001" in up.stdout
        again = run(["migrate", "upgrade"], SLIPWAY_DATABASE_URL=url)
        assert "upgrade: unchanged" in again.stdout
        at = run(["migrate", "current"], SLIPWAY_DATABASE_URL=url)
        assert at.returncode == 0 and "status=at-head" in at.stdout
        down = run(["migrate", "downgrade", "base"], SLIPWAY_DATABASE_URL=url)
        assert down.returncode == 0 and "to=none" in down.stdout
    finally:
        with psycopg.connect(admin.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    unreachable = run(["migrate", "current"], SLIPWAY_DATABASE_URL="postgresql://u:p@127.0.0.1:1/x")
    assert unreachable.returncode == 1 and "database error" in unreachable.stderr


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv not on PATH")
def test_wheel_ships_migrations_and_gunicorn_conf(tmp_path: Path) -> None:
    subprocess.run(
        ["uv", "build", "--wheel", "--package", "slipway-app", "--out-dir", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("slipway_app-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "slipway_app/migrations/env.py",
        "slipway_app/migrations/script.py.mako",
        "slipway_app/migrations/versions/0001_create_jobs.py",
        "slipway_app/gunicorn_conf.py",
        "slipway_app/cli.py",
        "slipway_app/core/__init__.py",
        "slipway_app/core/config.py",
        "slipway_app/worker/__init__.py",
        "slipway_app/worker/app.py",
        "slipway_app/api/router.py",
    ):
        assert path in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "slipway-app = slipway_app.cli:main" in text
