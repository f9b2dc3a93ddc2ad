"""Unit tests for plugins/modules/postgresql_app.py (psql is faked, no server needed)."""

from __future__ import annotations

import base64
from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from plugins.modules import postgresql_app as pga
from tests.unit.module_harness import ExitJson, FailJson, patch_exits

# A verifier written by PostgreSQL 15.20 itself (Debian bookworm) for the password
# "sandbox-db-7c1f0e9a4b2d": SELECT rolpassword FROM pg_authid after CREATE ROLE ... PASSWORD.
PG_VERIFIER = (
    "SCRAM-SHA-256$4096:hxICiP5JMGxaADWrDP2oYg==$DKFBiL+naOE8svVPzsbeLAqdXR0lA3DcEyBgE8l4PDA="
    ":Vzu7NAYQcY3cyfmZDZpTUJEq9ePIEhAoRj986Ec3puE="
)
SEP = "\x1f"


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_exits(monkeypatch)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, n, **kw: f"/usr/bin/{n}")
    monkeypatch.setattr(pga.os, "geteuid", lambda: 0)


ARGS = {"name": "slipway", "password": "correct horse 1", "database": "slipway"}


def _role_row(password: str | None, **attrs: bool) -> str:
    wanted = dict(pga._WANTED_ATTRS, **attrs)
    flags = ["t" if wanted[c] else "f" for c in pga._WANTED_ATTRS]
    return SEP.join([*flags, password or ""]) + "\n"


def _run(args: dict[str, Any], replies: list[str], check: bool = False):
    """Run the module; `replies` are psql's stdout for each call in order."""
    calls: list[tuple[list[str], str]] = []

    def fake_run_command(self: Any, cmd: list[str], data: str = "", **kw: Any):
        calls.append((cmd, data))
        return 0, replies[len(calls) - 1] if len(calls) <= len(replies) else "", ""

    full = dict(args, _ansible_check_mode=check)
    with (
        patch_module_args(full),
        mock.patch.object(basic.AnsibleModule, "run_command", fake_run_command),
        pytest.raises(ExitJson) as exc,
    ):
        pga.main()
    return exc.value.args[0], calls


def test_verifier_round_trip() -> None:
    v = pga.scram_verifier("pw", b"0123456789abcdef", 4096)
    assert v.startswith("SCRAM-SHA-256$4096:" + base64.b64encode(b"0123456789abcdef").decode())
    assert pga.scram_matches("pw", v)
    assert not pga.scram_matches("pw2", v)


@pytest.mark.parametrize("stored", ["", None, "md5" + "0" * 32, "SCRAM-SHA-256$x", "garbage"])
def test_non_scram_never_matches(stored: str | None) -> None:
    assert not pga.scram_matches("pw", stored)


def test_matches_verifier_written_by_postgresql() -> None:
    assert pga.scram_matches("sandbox-db-7c1f0e9a4b2d", PG_VERIFIER)
    assert not pga.scram_matches("sandbox-db-7c1f0e9a4b2e", PG_VERIFIER)


def test_quoting() -> None:
    assert pga.quote_ident('a"b') == '"a""b"'
    assert pga.quote_literal("it's") == "'it''s'"


def test_fresh_cluster_creates_role_and_database() -> None:
    result, calls = _run(ARGS, ["", "", ""])
    assert result["changed"] and result["role_created"] and result["database_created"]
    assert len(calls) == 3
    cmd, sql = calls[2]
    assert 'CREATE ROLE "slipway" LOGIN NOSUPERUSER' in sql
    assert 'CREATE DATABASE "slipway" OWNER "slipway"' in sql
    # the clear-text password is neither on the command line nor in the SQL
    assert all(ARGS["password"] not in part for part in cmd)
    assert ARGS["password"] not in sql
    assert cmd[:4] == ["/usr/bin/runuser", "-u", "postgres", "--"]


def test_converged_cluster_changes_nothing() -> None:
    stored = pga.scram_verifier(ARGS["password"], b"s" * 16, 4096)
    result, calls = _run(ARGS, [_role_row(stored), "slipway\n"])
    assert not result["changed"]
    assert result["actions"] == []
    assert len(calls) == 2


def test_changed_password_is_rewritten() -> None:
    stored = pga.scram_verifier("old password", b"s" * 16, 4096)
    result, calls = _run(ARGS, [_role_row(stored), "slipway\n", ""])
    assert result["changed"] and result["password_changed"]
    assert not result["role_created"] and not result["database_created"]
    sql = calls[2][1]
    assert sql.startswith('ALTER ROLE "slipway" PASSWORD \'SCRAM-SHA-256$4096:')
    verifier = sql.split("'")[1]
    assert pga.scram_matches(ARGS["password"], verifier)


def test_md5_password_is_replaced_by_scram() -> None:
    result, _ = _run(ARGS, [_role_row("md5" + "a" * 32), "slipway\n", ""])
    assert result["password_changed"]


def test_superuser_role_is_demoted_and_owner_fixed() -> None:
    stored = pga.scram_verifier(ARGS["password"], b"s" * 16, 4096)
    result, calls = _run(ARGS, [_role_row(stored, rolsuper=True), "postgres\n", ""])
    assert result["role_attributes_changed"] and result["owner_changed"]
    assert not result["password_changed"]
    sql = calls[2][1]
    assert 'ALTER ROLE "slipway" LOGIN NOSUPERUSER' in sql
    assert 'ALTER DATABASE "slipway" OWNER TO "slipway"' in sql


def test_check_mode_reports_but_writes_nothing() -> None:
    result, calls = _run(ARGS, ["", ""], check=True)
    assert result["changed"] and result["role_created"]
    assert len(calls) == 2  # the two reads only


def test_check_mode_without_psql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, n, **kw: None)
    result, calls = _run(ARGS, [], check=True)
    assert result["changed"] and calls == []


def test_missing_psql_fails_with_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, n, **kw: None)
    with patch_module_args(ARGS), pytest.raises(FailJson) as exc:
        pga.main()
    assert "psql is not installed" in exc.value.args[0]["msg"]


def test_psql_error_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        basic.AnsibleModule,
        "run_command",
        lambda self, cmd, **kw: (2, "", "connection to server on socket failed"),
    )
    with patch_module_args(ARGS), pytest.raises(FailJson) as exc:
        pga.main()
    msg = exc.value.args[0]["msg"]
    assert "exit code 2" in msg and "socket failed" in msg


def test_non_ascii_password_refused() -> None:
    with patch_module_args(dict(ARGS, password="pässword-long")), pytest.raises(FailJson) as exc:
        pga.main()
    assert "printable ASCII" in exc.value.args[0]["msg"]
