"""Alembic driven from code, so a host with only the wheel can migrate."""

from __future__ import annotations

from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool

from slipway_app.core.config import Settings
from slipway_app.core.db import make_sync_engine

SCRIPT_LOCATION = "slipway_app:migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, read directly by /health/ready


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["settings"] = settings
    return cfg


def script_heads(settings: Settings) -> tuple[str, ...]:
    """Head revision(s) shipped in this wheel."""
    return tuple(sorted(ScriptDirectory.from_config(alembic_config(settings)).get_heads()))


def current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


@dataclass(frozen=True)
class MigrationState:
    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def at_head(self) -> bool:
        return self.current == self.heads

    def describe(self) -> str:
        cur = ",".join(self.current) or "none"
        head = ",".join(self.heads)
        state = "at-head" if self.at_head else "behind"
        return f"current={cur} head={head} status={state}"


def state(settings: Settings) -> MigrationState:
    engine = make_sync_engine(settings, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            current = current_revisions(conn)
    finally:
        engine.dispose()
    return MigrationState(current=current, heads=script_heads(settings))


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)
