"""Unit tests for plugins/modules/app_health.py and plugins/module_utils/slipway_http.py,
against a scripted HTTP server on 127.0.0.1 and on a Unix socket (no app needed)."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from plugins.module_utils import slipway_http
from plugins.modules import app_health
from tests.unit.module_harness import ExitJson, FailJson, patch_exits

READY_OK = {
    "status": "ok",
    "failed": [],
    "release_id": "0.1.0-new",
    "version": "0.1.0",
    "checks": {"database": {"status": "ok"}, "migrations": {"status": "ok"}},
}
READY_BEHIND = {
    "status": "fail",
    "failed": ["migrations"],
    "release_id": "0.1.0-new",
    "version": "0.1.0",
    "checks": {
        "database": {"status": "ok"},
        "migrations": {"status": "fail", "error": "database is behind this release"},
    },
}


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_exits(monkeypatch)


class Script:
    """What the fake app answers: path -> list of (status, body, delay); the last one repeats."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, Any, float]]] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.lock = threading.Lock()

    def set(self, path: str, *answers: tuple[int, Any] | tuple[int, Any, float]) -> None:
        self.answers[path] = [(a[0], a[1], a[2] if len(a) > 2 else 0.0) for a in answers]

    def next(self, path: str) -> tuple[int, Any, float]:
        with self.lock:
            queue = self.answers.get(path) or [(404, {"detail": "Not Found"}, 0.0)]
            return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(script: Script) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.requests.append((self.path, self.headers.get("Host", "")))
            status, body, delay = script.next(self.path)
            time.sleep(delay)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def tcp_url(script: Script) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def unix_socket(script: Script, tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "app.sock")
    server = _UnixServer(path, _handler(script))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield path
    server.shutdown()
    server.server_close()
    thread.join(5)


def _run(args: dict[str, Any], check: bool = False) -> dict[str, Any]:
    full = dict({"interval": 0.01, "deadline": 2, "timeout": 2}, **args)
    full["_ansible_check_mode"] = check
    with patch_module_args(full), pytest.raises(ExitJson) as exc:
        app_health.main()
    result: dict[str, Any] = exc.value.args[0]
    return result


def _fail(args: dict[str, Any]) -> dict[str, Any]:
    full = dict({"interval": 0.01, "deadline": 0.3, "timeout": 2}, **args)
    with patch_module_args(full), pytest.raises(FailJson) as exc:
        app_health.main()
    result: dict[str, Any] = exc.value.args[0]
    return result


# --- slipway_http --------------------------------------------------------------------------


def test_get_over_tcp_and_unix_socket(script: Script, tcp_url: str, unix_socket: str) -> None:
    script.set("/x", (200, {"a": 1}))
    over_tcp = slipway_http.get(tcp_url, "/x")
    over_unix = slipway_http.get("http://app.example.org", "/x", unix_socket=unix_socket)
    for resp in (over_tcp, over_unix):
        assert resp.status == 200 and json.loads(resp.body) == {"a": 1}
        assert resp.latency_ms >= 0 and resp.headers["content-length"] == "8"
    # over the socket, the URL's host is only the Host header
    assert script.requests[-1] == ("/x", "app.example.org")


def test_get_joins_a_url_prefix(script: Script, tcp_url: str) -> None:
    script.set("/app/health/live", (200, {"status": "ok"}))
    assert slipway_http.get(tcp_url + "/app/", "/health/live").status == 200


def test_get_errors_name_the_target(tmp_path: Path, script: Script, tcp_url: str) -> None:
    missing = str(tmp_path / "none.sock")
    with pytest.raises(slipway_http.HttpRequestError, match=f"over the Unix socket {missing}"):
        slipway_http.get("http://localhost", "/health/live", unix_socket=missing)
    script.set("/slow", (200, {}, 1.0))
    with pytest.raises(slipway_http.HttpRequestError, match=r"no answer within 0\.2 s"):
        slipway_http.get(tcp_url, "/slow", timeout=0.2)
    with pytest.raises(slipway_http.HttpRequestError, match="not an http"):
        slipway_http.get("ftp://host", "/")
    # TLS spoken to a plain-HTTP server: an error, not a hang
    with pytest.raises(slipway_http.HttpRequestError):
        slipway_http.get(tcp_url.replace("http:", "https:"), "/x", validate_certs=False, timeout=2)


def test_poll_needs_consecutive_passes_and_keeps_every_attempt() -> None:
    answers = iter([True, False, True, True, True])
    outcome = slipway_http.poll(
        lambda: next(answers), bool, deadline=10, interval=0.001, successes=3
    )
    assert outcome.ok and outcome.attempts == [True, False, True, True, True]


def test_poll_is_bounded_by_deadline_and_count() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    outcome = slipway_http.poll(
        lambda: False, bool, deadline=1.0, interval=0.3, clock=lambda: now[0], sleep=sleep
    )
    assert not outcome.ok and len(outcome.attempts) == 5  # at 0, 0.3, 0.6, 0.9, 1.0
    assert slept[-1] == pytest.approx(0.1) and outcome.elapsed == pytest.approx(1.0)
    # a clock that never moves still stops, by count
    frozen = slipway_http.poll(
        lambda: False, bool, deadline=1.0, interval=0.5, clock=lambda: 0.0, sleep=lambda s: None
    )
    assert not frozen.ok and len(frozen.attempts) == 4
    # deadline 0: one attempt
    assert len(slipway_http.poll(lambda: False, bool, deadline=0).attempts) == 1


# --- app_health ----------------------------------------------------------------------------


def test_healthy_at_once(script: Script, tcp_url: str) -> None:
    script.set("/health/live", (200, {"status": "ok"}))
    script.set("/health/ready", (200, READY_OK))
    result = _run({"url": tcp_url, "expect_release": "0.1.0-new"})
    assert result["healthy"] and not result["changed"]
    assert result["attempts"] == 1 and result["failed_check"] is None
    assert result["release_id"] == "0.1.0-new"
    assert [c["path"] for c in result["checks"]] == ["/health/live", "/health/ready"]
    ready = result["checks"][1]
    assert ready["status"] == 200 and ready["body"] == READY_OK and ready["error"] is None


def test_waits_over_the_socket_until_ready(script: Script, unix_socket: str) -> None:
    script.set("/health/live", (200, {"status": "ok"}))
    script.set("/health/ready", (503, READY_BEHIND), (503, READY_BEHIND), (200, READY_OK))
    result = _run({"unix_socket": unix_socket, "successes": 2})
    assert result["healthy"] and result["attempts"] == 4


def test_unhealthy_fails_with_the_failing_check(script: Script, unix_socket: str) -> None:
    script.set("/health/live", (200, {"status": "ok"}))
    script.set("/health/ready", (503, READY_BEHIND))
    result = _fail({"unix_socket": unix_socket, "expect_release": "0.1.0-new"})
    assert not result["healthy"] and result["attempts"] >= 2
    assert result["failed_check"] == (
        "/health/ready answered 503: migrations: database is behind this release"
    )
    msg = result["msg"]
    assert f"http://localhost over the Unix socket {unix_socket}" in msg
    assert result["failed_check"] in msg and f"{result['attempts']} attempts in" in msg
    assert "Expected release 0.1.0-new." in msg


def test_unhealthy_as_data(script: Script, tcp_url: str) -> None:
    script.set("/health/ready", (500, b"Internal Server Error"))
    result = _run(
        {"url": tcp_url, "paths": ["/health/ready"], "deadline": 0.1, "fail_on_unhealthy": False}
    )
    assert result["healthy"] is False and not result["changed"]
    assert result["failed_check"] == "/health/ready answered 500: Internal Server Error"
    assert result["checks"][0]["body"] == "Internal Server Error"


def test_old_release_is_not_healthy(script: Script, tcp_url: str) -> None:
    script.set("/health/live", (200, {"status": "ok", "release_id": "0.1.0-old"}))
    script.set("/health/ready", (200, READY_OK))
    result = _fail({"url": tcp_url, "expect_release": "0.1.0-new"})
    assert result["failed_check"] == "/health/live reports release 0.1.0-old, not 0.1.0-new"


def test_a_release_nobody_reports_is_not_proven(script: Script, tcp_url: str) -> None:
    script.set("/health/live", (200, {"status": "ok"}))
    result = _fail({"url": tcp_url, "paths": ["/health/live"], "expect_release": "0.1.0-new"})
    assert "no response of /health/live reports a release_id" in result["failed_check"]


def test_no_socket_is_reported(tmp_path: Path) -> None:
    result = _fail({"unix_socket": str(tmp_path / "gone.sock"), "deadline": 0})
    assert result["attempts"] == 1
    assert result["failed_check"].startswith("/health/live did not answer: GET /health/live")
    assert result["checks"][0]["status"] is None and result["checks"][0]["error"]


def test_too_few_consecutive_passes(script: Script, tcp_url: str) -> None:
    script.set("/health/live", (200, {"status": "ok", "release_id": "r"}))
    result = _run(
        {"url": tcp_url, "paths": ["/health/live"], "successes": 1000, "deadline": 0.1}
        | {"fail_on_unhealthy": False}
    )
    assert not result["healthy"]
    assert "consecutive passing rounds of the 1000 required" in result["failed_check"]


def test_long_text_body_is_cut(script: Script, tcp_url: str) -> None:
    script.set("/big", (200, b"x" * 10000))
    result = _run({"url": tcp_url, "paths": ["/big"]})
    assert result["checks"][0]["body"] == "x" * 2048


def test_check_mode_runs_the_checks(script: Script, tcp_url: str) -> None:
    script.set("/health/live", (200, {"status": "ok"}))
    script.set("/health/ready", (200, READY_OK))
    result = _run({"url": tcp_url}, check=True)
    assert result["healthy"] and not result["changed"]
    assert len(script.requests) == 2


def test_bad_arguments_are_refused() -> None:
    assert "starting with /" in _fail({"paths": ["health"]})["msg"]
    assert "successes must be 1 or more" in _fail({"successes": 0})["msg"]
