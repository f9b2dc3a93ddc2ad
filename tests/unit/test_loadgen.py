"""tools/loadgen.py against local http.server instances on 127.0.0.1 (all bounded, a few seconds).

The server answers /ok with 200 and /flaky with 200 and 503 in turn, counts the TCP
connections it accepted (keep-alive reuse) and remembers the Host headers and SNI names it
saw. A port with no listener gives connection errors."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO
from tools import loadgen
from tools.loadgen import Config, parse_addr, percentile, run


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.hosts: set[str] = set()
        self.sni: set[str] = set()
        self.flip = itertools.count()
        self.lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self.lock:
            self.connections += 1
        return conn, addr

    @property
    def port(self) -> int:
        return self.server_address[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: Server

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hosts.add(self.headers["Host"])
            turn = next(self.server.flip)
        status = 503 if self.path == "/flaky" and turn % 2 else 200
        body = b"ok\n" if status == 200 else b"draining\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_counts_statuses_and_keeps_connections_alive(server: Server, tmp_path: Path) -> None:
    out, summary_file = tmp_path / "req.jsonl", tmp_path / "summary.json"
    summary = run(
        Config(
            url=f"http://127.0.0.1:{server.port}/flaky",
            concurrency=4,
            duration=8,
            max_requests=200,
            out=str(out),
            summary=str(summary_file),
        )
    )
    assert summary == json.loads(summary_file.read_text())
    assert summary["total"] == 200
    assert summary["by_status"] == {"200": 100, "503": 100}
    assert (summary["ok"], summary["failed"]) == (100, 100)
    assert summary["errors"] == []
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    assert summary["started"] < summary["ended"]
    assert summary["rps"] > 0
    assert server.connections == 4  # one keep-alive connection per worker
    lines = read_lines(out)
    assert len(lines) == 200
    assert set(lines[0]) == {"t", "latency_ms", "status", "error"}
    assert {line["status"] for line in lines} == {200, 503}
    assert all(line["error"] is None for line in lines)
    assert all(summary["started"] <= line["t"] <= summary["ended"] for line in lines)
    assert summary["longest_wait_ms"] == max(line["latency_ms"] for line in lines)


def test_connect_address_keeps_the_urls_host(server: Server) -> None:
    summary = run(
        Config(
            url=f"http://slipway.test:{server.port}/ok",
            connect=f"127.0.0.1:{server.port}",
            concurrency=1,
            max_requests=3,
        )
    )
    assert summary["by_status"] == {"200": 3}
    assert server.hosts == {f"slipway.test:{server.port}"}


def test_refused_port_gives_errors_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "req.jsonl"
    started = time.monotonic()
    summary = run(
        Config(
            url="http://slipway.test/health/ready",
            connect=f"127.0.0.1:{closed_port()}",
            concurrency=2,
            duration=0.5,
            out=str(out),
        )
    )
    assert time.monotonic() - started < 3
    assert summary["total"] == summary["failed"] > 0
    assert summary["ok"] == 0 and summary["by_status"] == {}
    assert summary["p50_ms"] is None
    [top] = summary["errors"]
    assert top["error"].startswith("ConnectionRefusedError") and top["count"] == summary["total"]
    # the back-off samples a refused port instead of hammering it
    assert summary["total"] < 2 * 0.5 / 0.01 + 10
    lines = read_lines(out)
    assert all(line["status"] is None and line["error"] for line in lines)
    # a request without an answer still counts in the longest wait
    assert summary["longest_wait_ms"] == max(line["latency_ms"] for line in lines) > 0


def test_rate_paces_all_connections_together(server: Server) -> None:
    summary = run(
        Config(url=f"http://127.0.0.1:{server.port}/ok", concurrency=4, duration=1.0, rate=40)
    )
    assert 30 <= summary["total"] <= 41


def test_stop_file_ends_the_run_early(server: Server, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    threading.Timer(0.5, stop.touch).start()
    started = time.monotonic()
    summary = run(
        Config(url=f"http://127.0.0.1:{server.port}/ok", duration=60, stop_file=str(stop))
    )
    assert time.monotonic() - started < 3
    assert summary["total"] > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("duration", 1801), ("max_requests", 2_000_001), ("concurrency", 0), ("rate", -1)],
)
def test_unbounded_runs_are_refused(field: str, value: float) -> None:
    config = Config(url="http://127.0.0.1:9/ok")
    setattr(config, field, value)
    with pytest.raises(ValueError, match=field.replace("_", "-")):
        run(config)


def test_helpers() -> None:
    assert parse_addr("10.0.0.1", 443) == ("10.0.0.1", 443)
    assert parse_addr("10.0.0.1:8443", 443) == ("10.0.0.1", 8443)
    assert parse_addr("[::1]:8443", 443) == ("::1", 8443)
    assert parse_addr("::1", 443) == ("::1", 443)
    assert percentile([], 50) is None
    assert percentile([float(i) for i in range(1, 101)], 50) == 50
    assert percentile([float(i) for i in range(1, 101)], 99) == 99


def make_tls(tmp: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA certificate file and a server context with a certificate for `name` it signed."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loadgen test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return tmp / "ca.pem", context


def test_https_uses_the_urls_name_for_sni_and_verification(server: Server, tmp_path: Path) -> None:
    cafile, context = make_tls(tmp_path, "slipway.test")

    def remember_sni(sock: Any, name: str, _ctx: ssl.SSLContext) -> None:
        server.sni.add(name)

    context.sni_callback = remember_sni
    server.socket = context.wrap_socket(server.socket, server_side=True)
    summary = run(
        Config(
            url=f"https://slipway.test:{server.port}/ok",
            connect=f"127.0.0.1:{server.port}",
            cacert=str(cafile),
            concurrency=2,
            max_requests=10,
        )
    )
    assert summary["by_status"] == {"200": 10}, summary
    assert server.sni == {"slipway.test"}
    assert server.connections == 2
    # without the CA the certificate is refused: an error per request, no crash
    refused = run(
        Config(
            url=f"https://slipway.test:{server.port}/ok",
            connect=f"127.0.0.1:{server.port}",
            max_requests=2,
            concurrency=1,
        )
    )
    assert refused["ok"] == 0
    assert "CERTIFICATE_VERIFY_FAILED" in refused["errors"][0]["error"]


@pytest.mark.parametrize("argv", [["-m", "tools.loadgen"], ["tools/loadgen.py"]])
def test_cli_stops_on_sigterm_and_writes_the_summary(
    server: Server, tmp_path: Path, argv: list[str]
) -> None:
    summary_file, out = tmp_path / "summary.json", tmp_path / "req.jsonl"
    url = f"http://127.0.0.1:{server.port}/ok"
    load = ["--concurrency", "2", "--duration", "60", "--rate", "100"]
    files = ["--out", str(out), "--summary", str(summary_file)]
    proc = subprocess.Popen(
        [sys.executable, *argv, "--url", url, *load, *files],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=""),
    )
    try:
        deadline = time.monotonic() + 20
        while server.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until the load runs (and its signal handlers are in)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    summary = json.loads(summary_file.read_text())
    assert summary == json.loads(stdout)
    assert 0 < summary["total"] == len(out.read_text().splitlines())
    assert summary["duration_s"] < 25


@pytest.mark.parametrize("catch_up", [True, False])
def test_after_a_stall_the_schedule_bursts_only_when_it_catches_up(catch_up: bool) -> None:
    """A 1 s stall at 20 r/s: the open-loop schedule sends the ~20 missed requests at once,
    --no-catch-up goes on one request per 50 ms."""
    config = loadgen.Config(url="http://127.0.0.1:9/", rate=20.0, catch_up=catch_up, duration=10)
    state = loadgen._Run(config, None)
    state.t0 -= 1.0  # as if every connection had waited a second for a restart
    started = time.monotonic()
    for _ in range(10):
        assert state.claim()
    took = time.monotonic() - started
    assert took < 0.1 if catch_up else took > 0.4
