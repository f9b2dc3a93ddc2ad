"""Alembic environment: the database URL comes from the same ``Settings`` as the app."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool, text

from slipway_app.core.config import Settings, get_settings
from slipway_app.core.db import make_sync_engine
from slipway_app.core.migrate import ADVISORY_LOCK_ID
from slipway_app.models import Base

config = context.config
settings: Settings = config.attributes.get("settings") or get_settings()
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=settings.database_url, target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_sync_engine(settings, poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
