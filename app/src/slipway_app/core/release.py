"""Which release this process runs, read from the release directory it was installed in.

A release lives in ``/opt/slipway/releases/<id>/`` with its virtualenv in ``venv/`` and a
``release.json`` written by the deploy (``{"id": ..., "version": ..., ...}``). Units start the
app through the resolved path, so ``sys.prefix`` is that venv and its parent holds the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RELEASE_FILE_ENV = "SLIPWAY_RELEASE_FILE"  # names the file directly (tests, odd layouts)
RELEASE_FILE = "release.json"
UNKNOWN = "dev"
MAX_ID_LENGTH = 128


def release_file() -> Path:
    """``$SLIPWAY_RELEASE_FILE``, else ``release.json`` next to this interpreter's venv."""
    named = os.environ.get(RELEASE_FILE_ENV)
    if named:
        return Path(named)
    return Path(sys.prefix).resolve().parent / RELEASE_FILE


def read_release_id(path: Path | None = None) -> str:
    """The ``id`` in the release file; ``"dev"`` when it is missing, unreadable or invalid."""
    try:
        data = json.loads((path or release_file()).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return UNKNOWN
    value = data.get("id") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_ID_LENGTH:
        return UNKNOWN
    return value.strip()
