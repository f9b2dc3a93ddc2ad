"""Settings: environments, URL normalisation, prod refusing placeholder/missing secrets."""

from __future__ import annotations

import pytest
from slipway_app.core.config import ConfigError, load_settings

GOOD_KEY = "k" * 40
GOOD_DB = "postgresql://slipway:s3cr3t-pw@db.internal:5432/slipway"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SLIPWAY_"):
            monkeypatch.delenv(key)


def test_defaults_load_outside_prod() -> None:
    s = load_settings()
    assert s.env == "local"
    assert s.database_url.startswith("postgresql+psycopg://")
    assert s.queues == ["default"]
    assert s.workers >= 3


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_ENV", "dev")
    monkeypatch.setenv("SLIPWAY_WORKERS", "7")
    monkeypatch.setenv("SLIPWAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("SLIPWAY_CELERY_QUEUES", "default, gpu")
    s = load_settings()
    assert (s.env, s.workers, s.log_level, s.queues) == ("dev", 7, "DEBUG", ["default", "gpu"])


def test_env_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "slipway.env"
    f.write_text("SLIPWAY_RELEASE_ID=r42\nSLIPWAY_BIND=unix:/run/slipway/app.sock\n")
    monkeypatch.setenv("SLIPWAY_ENV_FILE", str(f))
    s = load_settings()
    assert (s.release_id, s.bind) == ("r42", "unix:/run/slipway/app.sock")


def test_prod_accepts_real_secrets() -> None:
    s = load_settings(env="prod", secret_key=GOOD_KEY, database_url=GOOD_DB)
    assert s.env == "prod"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"database_url": GOOD_DB}, "SLIPWAY_SECRET_KEY is not set"),
        ({"database_url": GOOD_DB, "secret_key": "changethis"}, "SLIPWAY_SECRET_KEY"),
        ({"database_url": GOOD_DB, "secret_key": "short"}, "SLIPWAY_SECRET_KEY"),
        ({"secret_key": GOOD_KEY}, "SLIPWAY_DATABASE_URL is not set"),
        (
            {"secret_key": GOOD_KEY, "database_url": "postgresql://u:changethis@h/db"},
            "SLIPWAY_DATABASE_URL has a placeholder password",
        ),
        (
            {"secret_key": GOOD_KEY, "database_url": "postgresql://u@h/db"},
            "SLIPWAY_DATABASE_URL has no password",
        ),
        (
            {
                "secret_key": GOOD_KEY,
                "database_url": GOOD_DB,
                "redis_url": "redis://:changeme@h:6379/0",
            },
            "SLIPWAY_REDIS_URL has a placeholder password",
        ),
    ],
)
def test_prod_refuses_placeholders_naming_the_variable(
    overrides: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(env="prod", **overrides)


def test_prod_refusal_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_ENV", "prod")
    monkeypatch.setenv("SLIPWAY_DATABASE_URL", GOOD_DB)
    monkeypatch.setenv("SLIPWAY_SECRET_KEY", "changeme")
    with pytest.raises(ConfigError, match="SLIPWAY_SECRET_KEY"):
        load_settings()


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("env", "staging", "SLIPWAY_ENV"),
        ("database_url", "mysql://x@y/z", "SLIPWAY_DATABASE_URL"),
        ("redis_url", "http://x", "SLIPWAY_REDIS_URL"),
        ("celery_queues", "default,video", "SLIPWAY_CELERY_QUEUES"),
        ("workers", "0", "SLIPWAY_WORKERS"),
    ],
)
def test_invalid_values_name_the_variable(field: str, value: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(**{field: value})


def test_summary_redacts_secrets() -> None:
    s = load_settings(secret_key=GOOD_KEY, database_url=GOOD_DB)
    summary = s.summary()
    assert summary["SLIPWAY_SECRET_KEY"] == "***"
    assert "s3cr3t" not in str(summary["SLIPWAY_DATABASE_URL"])
    assert GOOD_KEY not in str(summary)
