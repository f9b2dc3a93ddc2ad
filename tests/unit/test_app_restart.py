"""Unit tests for plugins/modules/app_restart.py: systemctl (run_command) and the health
request are faked, so this proves the module's logic only; the lead's VM runs prove the real
restart behaviour."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from plugins.module_utils.slipway_http import HttpRequestError, Response
from plugins.modules import app_restart
from tests.unit.module_harness import ExitJson, FailJson, patch_exits


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_exits(monkeypatch)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, n, **kw: f"/bin/{n}")
    monkeypatch.setattr(app_restart, "INTERVAL", 0.01)


class FakeSystemd:
    """A unit whose states after `systemctl restart` come from `after` (the last repeats)."""

    def __init__(self, pid: int = 100, after: list[tuple[str, int]] | None = None) -> None:
        self.state = ("active", pid)
        self.load = "loaded"
        self.after = after or [("active", 200)]
        self.restarted = False
        self.calls: list[list[str]] = []
        self.restart_rc = 0

    def run_command(self, cmd: list[str], **kw: Any) -> tuple[int, str, str]:
        self.calls.append(cmd)
        if cmd[1] == "restart":
            self.restarted = True
            return self.restart_rc, "", "Job failed. See journalctl" if self.restart_rc else ""
        if self.restarted:
            self.state = self.after.pop(0) if len(self.after) > 1 else self.after[0]
        active, pid = self.state
        sub = {"active": "running", "activating": "start", "failed": "failed"}.get(active, "dead")
        out = f"LoadState={self.load}\nActiveState={active}\nSubState={sub}\nMainPID={pid}\n"
        return 0, out, ""


WEB = {"unit": "slipway-web.service", "kind": "web", "health_socket": "/run/slipway/web.sock",
       "expect_release": "0.1.0-new", "deadline": 2}  # fmt: skip
WORKER = {"unit": "slipway-worker@default.service", "kind": "worker", "deadline": 2,
          "settle": 0.1}  # fmt: skip


def _health(*answers: Response | Exception) -> Any:
    """A fake slipway_http.get answering `answers` in turn (the last repeats)."""
    queue = list(answers)
    calls: list[dict[str, Any]] = []

    def fake(url: str, path: str, **kw: Any) -> Response:
        calls.append({"url": url, "path": path, **kw})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    fake.calls = calls  # type: ignore[attr-defined]
    return fake


def _ok(release: str = "0.1.0-new", status: int = 200) -> Response:
    return Response(status, {}, f'{{"status":"ok","release_id":"{release}"}}'.encode(), 1.0)


def _call(
    args: dict[str, Any], systemd: FakeSystemd, health: Any = None, check: bool = False
) -> tuple[type[Exception], dict[str, Any]]:
    with (
        patch_module_args(dict(args, _ansible_check_mode=check)),
        mock.patch.object(basic.AnsibleModule, "run_command", systemd.run_command),
        mock.patch.object(app_restart, "get", health or _health(_ok())),
        pytest.raises((ExitJson, FailJson)) as exc,
    ):
        app_restart.main()
    return type(exc.value), exc.value.args[0]


def test_web_restart_waits_for_new_pid_and_release() -> None:
    systemd = FakeSystemd(after=[("activating", 0), ("active", 200)])
    refused = HttpRequestError("GET /health/live: connection refused")
    health = _health(refused, _ok("0.1.0-old"), _ok())
    kind, result = _call(WEB, systemd, health)
    assert kind is ExitJson, result
    assert result["changed"] and result["old_pid"] == 100 and result["new_pid"] == 200
    assert result["release_id"] == "0.1.0-new" and result["checks"][-1]["error"] is None
    assert [c["error"] is None for c in result["checks"]] == [False, False, False, True]
    assert result["elapsed"] >= result["ready_seconds"] >= 0 and "restart_seconds" in result
    assert ["/bin/systemctl", "restart", "slipway-web.service"] in systemd.calls
    asked = health.calls[-1]
    assert asked["path"] == "/health/live" and asked["unix_socket"] == "/run/slipway/web.sock"


def test_web_old_process_is_not_back_even_if_healthy() -> None:
    systemd = FakeSystemd(pid=100, after=[("active", 100)])  # never got a new process
    kind, result = _call(dict(WEB, deadline=0.1), systemd)
    assert kind is FailJson
    assert "MainPID 100 (before the restart 100)" in result["msg"]


def test_web_wrong_release_fails_with_a_hint() -> None:
    kind, result = _call(dict(WEB, deadline=0.1), FakeSystemd(), _health(_ok("0.1.0-old")))
    assert kind is FailJson
    msg = result["msg"]
    assert msg.startswith("slipway-web.service is not back after its restart: ")
    assert "/health/live reports release 0.1.0-old, not 0.1.0-new" in msg
    assert "It is active/running with MainPID 200" in msg
    assert "journalctl -u slipway-web.service -n 50" in msg
    assert result["unit"] == "slipway-web.service" and result["state"]["MainPID"] == 200
    assert result["last_check"]["release_id"] == "0.1.0-old" and result["elapsed"] >= 0.1


def test_web_without_release_id_does_not_prove_the_release() -> None:
    bare = Response(200, {}, b'{"status":"ok"}', 1.0)
    kind, result = _call(dict(WEB, deadline=0), FakeSystemd(), _health(bare))
    assert kind is FailJson and "reports no release_id to compare with 0.1.0-new" in result["msg"]
    # without expect_release, 200 is enough
    kind, result = _call(dict(WEB, expect_release=None), FakeSystemd(), _health(bare))
    assert kind is ExitJson and result["release_id"] is None


def test_web_needs_a_socket() -> None:
    kind, result = _call({"unit": "u", "kind": "web"}, FakeSystemd())
    assert kind is FailJson and "health_socket" in result["msg"]


def test_worker_must_stay_up_for_settle() -> None:
    systemd = FakeSystemd(after=[("activating", 300), ("active", 300)])
    kind, result = _call(WORKER, systemd, _health(AssertionError("no HTTP for workers")))
    assert kind is ExitJson, result
    assert result["new_pid"] == 300 and result["release_id"] is None
    assert result["ready_seconds"] >= 0.1  # the settle time is part of getting ready
    show_calls = [c for c in systemd.calls if c[1] == "show"]
    assert len(show_calls) >= 4  # before, two waits, and the settle checks


def test_worker_crash_loop_is_caught_by_settle() -> None:
    systemd = FakeSystemd(after=[("active", 300), ("activating", 0), ("active", 301)])
    kind, result = _call(dict(WORKER, kind="beat"), systemd)
    assert kind is FailJson
    assert "did not stay up for 0.1 s: activating/start with MainPID 0 (was 300)" in result["msg"]


def test_failed_restart_reports_systemctl() -> None:
    systemd = FakeSystemd(after=[("failed", 0)])
    systemd.restart_rc = 1
    kind, result = _call(WORKER, systemd)
    assert kind is FailJson
    assert "systemctl restart exited 1: Job failed. See journalctl" in result["msg"]
    assert "It is failed/failed with MainPID 0" in result["msg"]
    assert "journalctl -u slipway-worker@default.service -n 50" in result["msg"]


def test_check_mode_restarts_nothing() -> None:
    systemd = FakeSystemd()
    kind, result = _call(WEB, systemd, check=True)
    assert kind is ExitJson and result["changed"] and result["old_pid"] == 100
    assert all(c[1] == "show" for c in systemd.calls)


def test_unknown_unit() -> None:
    systemd = FakeSystemd()
    systemd.load = "not-found"
    kind, result = _call(WORKER, systemd)
    assert kind is FailJson and "not a loaded unit (LoadState=not-found)" in result["msg"]
    assert not any(c[1] == "restart" for c in systemd.calls)
    kind, result = _call(WORKER, systemd, check=True)
    assert kind is ExitJson and result["changed"] and "not installed yet" in result["msg"]
