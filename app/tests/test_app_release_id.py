"""The release id: SLIPWAY_RELEASE_ID wins, else release.json of the release directory the
interpreter runs from (or the file SLIPWAY_RELEASE_FILE names), else "dev", never a crash."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from slipway_app.core import release
from slipway_app.core.config import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SLIPWAY_"):
            monkeypatch.delenv(key)


def _release_dir(root: Path, rid: str) -> Path:
    """/opt/slipway/releases/<id>/ in miniature: venv/ and release.json."""
    rdir = root / "releases" / rid
    (rdir / "venv" / "bin").mkdir(parents=True)
    (rdir / "release.json").write_text(
        json.dumps({"id": rid, "version": "0.1.0", "alembic_heads": ["0001"], "state": "active"})
    )
    return rdir


def test_release_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "release.json"
    f.write_text(json.dumps({"id": "0.1.0-abcdef012345", "version": "0.1.0"}))
    monkeypatch.setenv("SLIPWAY_RELEASE_FILE", str(f))
    assert load_settings().release_id == "0.1.0-abcdef012345"


def test_environment_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "release.json"
    f.write_text(json.dumps({"id": "from-file"}))
    monkeypatch.setenv("SLIPWAY_RELEASE_FILE", str(f))
    monkeypatch.setenv("SLIPWAY_RELEASE_ID", "from-env")
    assert load_settings().release_id == "from-env"
    assert load_settings(release_id="override").release_id == "override"


def test_release_directory_of_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rdir = _release_dir(tmp_path, "0.1.0-abcdef012345")
    monkeypatch.setattr(sys, "prefix", str(rdir / "venv"))
    assert load_settings().release_id == "0.1.0-abcdef012345"


def test_symlinked_prefix_is_resolved_to_the_real_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _release_dir(tmp_path, "0.1.0-000000000001")
    _release_dir(tmp_path, "0.1.0-000000000002")
    (tmp_path / "current").symlink_to(old)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "current" / "venv"))
    # The real directory's file, even though a file sits next to the link too.
    (tmp_path / "release.json").write_text(json.dumps({"id": "next-to-the-link"}))
    assert release.release_file() == old / "release.json"
    assert load_settings().release_id == "0.1.0-000000000001"


def test_no_release_file_is_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "venv").mkdir()
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert load_settings().release_id == "dev"
    monkeypatch.setenv("SLIPWAY_RELEASE_FILE", str(tmp_path / "absent.json"))
    assert load_settings().release_id == "dev"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'["0.1.0-abc"]',
        b'{"version": "0.1.0"}',
        b'{"id": 42}',
        b'{"id": null}',
        b'{"id": "   "}',
        json.dumps({"id": "x" * 129}).encode(),
        b'{"id": "\xff\xfe"}',
    ],
    ids=["empty", "broken", "list", "no-id", "int", "null", "blank", "too-long", "not-utf8"],
)
def test_invalid_release_file_is_dev(
    content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "release.json"
    f.write_bytes(content)
    monkeypatch.setenv("SLIPWAY_RELEASE_FILE", str(f))
    assert load_settings().release_id == "dev"


def test_unreadable_release_file_is_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_RELEASE_FILE", str(tmp_path))  # a directory: read fails
    assert load_settings().release_id == "dev"
    f = tmp_path / "release.json"
    f.write_text(json.dumps({"id": "r1"}))
    f.chmod(0)
    monkeypatch.setenv("SLIPWAY_RELEASE_FILE", str(f))
    expected = "r1" if os.geteuid() == 0 else "dev"  # root reads mode 0 files
    assert load_settings().release_id == expected
