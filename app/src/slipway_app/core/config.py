"""One pydantic-settings ``Settings`` for the web app, the worker, beat and the CLI.

Every field is read from an environment variable named ``SLIPWAY_<FIELD>`` (upper case),
so a systemd ``EnvironmentFile`` is all a deploy needs. ``SLIPWAY_ENV_FILE`` may name a
dotenv file read underneath the real environment (handy outside systemd).

In ``prod`` the settings refuse to load while a secret is missing or still a placeholder,
and the error names the variable to fix.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slipway_app.core.release import MAX_ID_LENGTH, read_release_id

ENV_PREFIX = "SLIPWAY_"
PLACEHOLDERS = frozenset(
    {"", "changethis", "changeme", "change-me", "secret", "password", "placeholder", "todo", "xxx"}
)
MIN_SECRET_KEY_LENGTH = 32


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and check-config)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def default_workers() -> int:
    """Gunicorn's rule of thumb: 2 x CPU + 1."""
    return 2 * (os.cpu_count() or 1) + 1


class ConfigError(Exception):
    """The configuration cannot be used; the message names the variable(s) to fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=True
    )

    # --- identity -----------------------------------------------------------------------
    env: Literal["local", "dev", "test", "prod"] = "local"
    # SLIPWAY_RELEASE_ID wins (dev, tests); else the id in the release directory's release.json
    release_id: str = Field(default_factory=read_release_id, max_length=MAX_ID_LENGTH)
    secret_key: SecretStr = SecretStr("changethis")

    # --- PostgreSQL ---------------------------------------------------------------------
    database_url: str = "postgresql+psycopg://slipway:changethis@127.0.0.1:5432/slipway"
    db_pool_size: int = Field(5, ge=1, le=100)
    db_max_overflow: int = Field(5, ge=0, le=100)
    db_connect_timeout: int = Field(3, ge=1, le=60)
    db_statement_timeout_ms: int = Field(15000, ge=0)

    # --- Redis (Celery broker + task counters) ------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_connect_timeout: float = Field(2.0, gt=0, le=60)
    redis_socket_timeout: float = Field(3.0, gt=0, le=60)

    # --- HTTP server (Gunicorn) ---------------------------------------------------------
    bind: str = "127.0.0.1:8000"
    workers: int = Field(default_factory=default_workers, ge=1, le=256)
    timeout: int = Field(60, ge=1)
    graceful_timeout: int = Field(30, ge=1)
    keepalive: int = Field(5, ge=1)
    forwarded_allow_ips: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    access_log: bool = True

    # --- request and job limits ---------------------------------------------------------
    max_body_bytes: int = Field(262_144, ge=1024)
    health_timeout: float = Field(2.0, gt=0, le=30)
    jobs_retention_days: int = Field(7, ge=1)
    purge_interval_seconds: int = Field(3600, ge=10)

    # --- Celery worker / beat -----------------------------------------------------------
    celery_queues: str = "default"
    celery_pool: Literal["prefork", "threads", "solo", "eventlet", "gevent"] = "prefork"
    celery_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=512)
    celery_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None
    celery_soft_shutdown_timeout: float = Field(60.0, ge=0)
    celery_visibility_timeout: int = Field(3600, ge=1)
    celery_task_time_limit: int = Field(600, ge=1)
    celery_max_retries: int = Field(5, ge=0, le=100)
    celery_retry_backoff_max: int = Field(300, ge=1)
    beat_schedule_file: str = "/tmp/slipway-celerybeat-schedule"

    @field_validator("log_level", "celery_log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in {"postgresql", "postgres", "postgresql+psycopg"}:
            raise ValueError("must be a postgresql:// or postgresql+psycopg:// URL")
        return f"postgresql+psycopg://{rest}"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("celery_queues")
    @classmethod
    def _queues(cls, value: str) -> str:
        queues = [q.strip() for q in value.split(",") if q.strip()]
        unknown = sorted(set(queues) - {"default", "gpu"})
        if not queues or unknown:
            raise ValueError(f"queues must be a comma list of default,gpu (got {value!r})")
        return ",".join(queues)

    @model_validator(mode="after")
    def _prod_secrets(self) -> Settings:
        if self.env != "prod":
            return self
        problems: list[str] = []
        key = self.secret_key.get_secret_value()
        if "secret_key" not in self.model_fields_set:
            problems.append(f"{env_name('secret_key')} is not set")
        elif key.lower() in PLACEHOLDERS or len(key) < MIN_SECRET_KEY_LENGTH:
            problems.append(
                f"{env_name('secret_key')} is a placeholder or shorter than "
                f"{MIN_SECRET_KEY_LENGTH} characters"
            )
        for field in ("database_url", "redis_url"):
            url = getattr(self, field)
            password = urlsplit(url).password
            if field == "database_url" and field not in self.model_fields_set:
                problems.append(f"{env_name(field)} is not set")
            elif field == "database_url" and not password:
                problems.append(f"{env_name(field)} has no password")
            elif password is not None and password.lower() in PLACEHOLDERS:
                problems.append(f"{env_name(field)} has a placeholder password")
        if problems:
            raise ValueError("refusing to start with SLIPWAY_ENV=prod: " + "; ".join(problems))
        return self

    @property
    def queues(self) -> list[str]:
        return self.celery_queues.split(",")

    @property
    def worker_log_level(self) -> str:
        return self.celery_log_level or self.log_level

    def summary(self) -> dict[str, object]:
        """Every setting by variable name, secrets redacted (for ``check-config``)."""
        out: dict[str, object] = {}
        for field in type(self).model_fields:
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = "***"
            elif field.endswith("_url"):
                value = redact_url(value)
            out[env_name(field)] = value
        return out


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into one ``ConfigError`` per variable."""
    env_file = os.environ.get("SLIPWAY_ENV_FILE") or None
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = env_name(loc[0]) if loc else "configuration"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(msg if not loc else f"{where}: {msg}")
        raise ConfigError("; ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
