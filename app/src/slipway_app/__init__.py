"""Slipway bundled app: a FastAPI service with a Celery worker, PostgreSQL and Redis."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slipway-app")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0+unknown"
