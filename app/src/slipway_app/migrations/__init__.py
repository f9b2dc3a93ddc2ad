"""Alembic migrations, shipped inside the wheel (script_location ``slipway_app:migrations``)."""
