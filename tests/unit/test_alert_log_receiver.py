"""The local Alertmanager receiver (roles/prometheus/files/slipway-alert-log), served on a
loopback port of this machine: what it keeps, what it logs, what it refuses."""

from __future__ import annotations

import http.client
import importlib.machinery
import importlib.util
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

SOURCE = REPO / "roles/prometheus/files/slipway-alert-log"

NOTIFICATION = {
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "SlipwayAppDown", "instance": "web1", "severity": "critical"},
        }
    ],
}


def load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("slipway_alert_log", str(SOURCE))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    module = load()
    module.LOG = tmp_path / "alerts.jsonl"
    server = ThreadingHTTPServer(("127.0.0.1", 0), module.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", module.LOG
    finally:
        server.shutdown()
        server.server_close()


def post(url: str, body: bytes, length: int | str | None = None) -> int:
    """POST body, saying it is `length` bytes long (a refused body is never sent)."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(len(body) if length is None else length))
        conn.endheaders(body if length is None else None)
        return conn.getresponse().status
    finally:
        conn.close()


def count(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(json.load(response)["notifications"])


def test_a_notification_is_kept_and_logged(
    receiver: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    url, log = receiver
    assert count(url) == 0
    assert post(url, json.dumps(NOTIFICATION).encode()) == 200
    assert count(url) == 1
    assert json.loads(log.read_text()) == NOTIFICATION
    assert "firing SlipwayAppDown instance=web1 severity=critical" in capfd.readouterr().out


@pytest.mark.parametrize(
    ("body", "length", "status"),
    [
        pytest.param(b"", None, 411, id="no-body"),
        pytest.param(b"not json", None, 400, id="not-json"),
        pytest.param(json.dumps({"status": "firing"}).encode(), None, 400, id="no-alerts"),
        pytest.param(b"", (1 << 20) + 1, 413, id="over-1-MiB"),
        pytest.param(b"{}", "abc", 400, id="length-not-a-number"),
        pytest.param(json.dumps({"alerts": "xy"}).encode(), None, 400, id="alerts-not-a-list"),
        pytest.param(json.dumps({"alerts": [1]}).encode(), None, 400, id="alert-not-a-mapping"),
        pytest.param(json.dumps([NOTIFICATION]).encode(), None, 400, id="not-a-mapping"),
    ],
)
def test_anything_else_is_refused_and_not_kept(
    receiver: tuple[str, Path], body: bytes, length: int | str | None, status: int
) -> None:
    url, log = receiver
    assert post(url, body, length) == status
    assert not log.exists()
    assert count(url) == 0


def test_a_label_cannot_forge_a_journal_line(
    receiver: tuple[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    url, _ = receiver
    forged = {"alertname": "SlipwayAppDown", "instance": "web1\nfiring Fake instance=x"}
    body = {"status": "firing", "alerts": [{"status": "firing", "labels": forged}]}
    assert post(url, json.dumps(body).encode()) == 200
    out = capfd.readouterr().out
    assert out.splitlines() == ['firing SlipwayAppDown instance="web1\\nfiring Fake instance=x"']
