"""bench/timeline.py on synthetic loadgen records and audit events."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from bench.timeline import bin_requests, plot_timeline
from tests.conftest import REPO

T0 = 1_800_000_000.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic() -> tuple[list[dict], list[dict]]:
    """4 s of requests: 10/s; in second 2 two 503s and one refused connection."""
    requests = []
    for second in range(4):
        for i in range(10):
            status: int | None = 200
            error = None
            if second == 2 and i < 2:
                status = 503
            if second == 2 and i == 2:
                status, error = None, "ConnectionRefusedError: refused"
            requests.append(
                {
                    "t": T0 + second + i / 10,
                    "latency_ms": float(i + 1) * (10 if second == 1 else 1),
                    "status": status,
                    "error": error,
                }
            )
    events = [
        {"time": T0 + 1.5, "host": "web1", "event": "drained", "task": "Drain"},
        {"time": T0 + 2.0, "host": "web1", "event": "switched", "task": "Switch"},
        {"time": T0 + 3.2, "host": "web1", "event": "restored", "task": "Restore"},
    ]
    return requests, events


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_bins_and_png(tmp_path: Path) -> None:
    requests, events = synthetic()
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in requests))
    out = tmp_path / "timeline.png"
    series = plot_timeline(jsonl, events, out, "deploy r1 -> r2")
    assert series["t0"] == T0
    assert series["second"] == [0, 1, 2, 3]
    assert series["rps"] == [10, 10, 10, 10]
    assert series["bad"] == [0, 0, 3, 0]
    # p99 of 10 values is the largest; second 2's refused request has no latency
    assert series["p99_ms"] == [10.0, 100.0, 10.0, 10.0]
    assert out.stat().st_size > 10_000
    assert png_size(out) == (1400, 900)


def test_no_errors_and_empty_seconds(tmp_path: Path) -> None:
    requests = [
        {"t": T0, "latency_ms": 1.0, "status": 200, "error": None},
        {"t": T0 + 2.5, "latency_ms": 2.0, "status": 204, "error": None},
    ]
    series = plot_timeline(requests, [], tmp_path / "t.png", "quiet")
    assert series["rps"] == [1, 0, 1]
    assert series["p99_ms"] == [1.0, None, 2.0]
    assert series["bad"] == [0, 0, 0]
    assert png_size(tmp_path / "t.png") == (1400, 900)


def test_empty_input() -> None:
    assert bin_requests([])["second"] == []


def test_cli_reads_the_audit_log(tmp_path: Path) -> None:
    requests, events = synthetic()
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in requests))
    audit = tmp_path / "audit.log"
    old = {"action": "restart", "events": []}
    line = {"action": "deploy", "from": "r1", "to": "r2", "hosts": ["web1"], "result": "ok"}
    audit.write_text(json.dumps(old) + "\n" + json.dumps({**line, "events": events}) + "\n")
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, "bench/timeline.py", str(jsonl), str(audit), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "40 requests, 3 non-2xx/errors" in proc.stdout
    assert png_size(out) == (1400, 900)
