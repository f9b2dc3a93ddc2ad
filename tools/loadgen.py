#!/usr/bin/env python3
"""Bounded HTTP(S) load generator: what clients see while a deploy rolls over the hosts.

Threads, each with one keep-alive connection (http.client, stdlib only), send GET requests
to one URL until the duration or the request budget runs out, SIGTERM/SIGINT arrives or the
stop file appears. A failed request closes its connection and the next one reconnects.

    python3 -m tools.loadgen --url https://slipway.test/health/ready \\
        --connect 10.77.0.10:443 --cacert pebble.pem --concurrency 8 --duration 120 \\
        --out requests.jsonl --summary summary.json

``--connect`` is the TCP address dialled; SNI and the Host header still come from the URL,
so no DNS is needed. ``--out`` gets one JSON line per request: ``t`` (epoch at start),
``latency_ms``, ``status`` (int, or null when no response came) and ``error`` (or null).
Importable as ``run(Config(...)) -> summary``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import signal
import socket
import ssl
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

MAX_DURATION_S = 1800.0
MAX_REQUESTS = 2_000_000
MAX_CONCURRENCY = 256
# A request may wait out a proxy's own read timeout (nginx's 60 s) and a little more.
MAX_TIMEOUT_S = 120
# After an error a worker waits this long before it reconnects, so a refused port is
# sampled, not hammered (and the output file does not fill with millions of lines).
ERROR_BACKOFF_S = 0.01
# What a server's close of an idle kept-alive connection looks like to the client.
STALE_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass
class Config:
    url: str
    connect: str | None = None
    cacert: str | None = None
    concurrency: int = 4
    duration: float = 10.0
    max_requests: int = 100_000
    rate: float | None = None
    # Under --rate, send the requests a stall held back all at once afterwards (an open-loop
    # schedule), or not: skip the missed slots and go on at the rate from now.
    catch_up: bool = True
    out: str | None = None
    summary: str | None = None
    stop_file: str | None = None
    timeout: float = 5.0

    def check(self) -> None:
        """Refuse a run that is not bounded, with the limit that was passed."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url must be http(s)://host/path, got {self.url!r}")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION_S:g}], got {self.duration}")
        if not 0 < self.max_requests <= MAX_REQUESTS:
            raise ValueError(f"--max-requests must be 1..{MAX_REQUESTS}, got {self.max_requests}")
        if not 0 < self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be 1..{MAX_CONCURRENCY}, got {self.concurrency}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"--rate must be > 0 per second, got {self.rate}")
        if not 0 < self.timeout <= MAX_TIMEOUT_S:
            raise ValueError(f"--timeout must be in (0, {MAX_TIMEOUT_S}] s, got {self.timeout}")


def parse_addr(addr: str, default_port: int) -> tuple[str, int]:
    """'10.0.0.1', '10.0.0.1:8443', '[::1]:8443' or '::1' as (host, port)."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if addr.count(":") == 1:
        host, _, port = addr.partition(":")
        return host, int(port)
    return addr, default_port


class _HTTPConnection(http.client.HTTPConnection):
    """Dials `target`; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, target: tuple[str, int], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._target = target

    def connect(self) -> None:
        self.sock = socket.create_connection(self._target, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _HTTPSConnection(http.client.HTTPSConnection):
    """Dials `target`; SNI, certificate check and Host header use the URL's host."""

    def __init__(
        self,
        host: str,
        port: int,
        target: tuple[str, int],
        timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._target = target
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection(self._target, self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _Run:
    """Shared state of one run: request budget, pacing, results."""

    def __init__(self, config: Config, out: IO[str] | None) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.target = (self.host, self.port)
        if config.connect:
            self.target = parse_addr(config.connect, self.port)
        self.context: ssl.SSLContext | None = None
        if self.https:
            self.context = ssl.create_default_context(cafile=config.cacert)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.out = out
        self.issued = 0
        self.next_due = 0.0  # --no-catch-up: the next slot
        self.started = time.time()
        self.deadline = time.monotonic() + config.duration
        self.t0 = time.monotonic()
        self.latencies = array("d")
        self.longest_ms = 0.0  # the slowest request, answered or not
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.total = 0

    def connection(self) -> http.client.HTTPConnection:
        timeout = self.config.timeout
        if self.context is not None:
            return _HTTPSConnection(self.host, self.port, self.target, timeout, self.context)
        return _HTTPConnection(self.host, self.port, self.target, timeout)

    def claim(self) -> bool:
        """Take the next request of the budget, waiting for its slot under --rate."""
        with self.lock:
            if self.stop.is_set() or self.issued >= self.config.max_requests:
                return False
            index = self.issued
            self.issued += 1
            if self.config.rate and not self.config.catch_up:
                due = max(self.next_due, time.monotonic())
                self.next_due = due + 1 / self.config.rate
        if self.config.rate:
            if self.config.catch_up:
                due = self.t0 + index / self.config.rate
            if due >= self.deadline:
                return False
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                return False
        return time.monotonic() < self.deadline and not self.stop.is_set()

    def record(self, t: float, latency_ms: float, status: int | None, error: str | None) -> None:
        line = json.dumps(
            {"t": round(t, 6), "latency_ms": round(latency_ms, 3), "status": status, "error": error}
        )
        with self.lock:
            self.total += 1
            self.longest_ms = max(self.longest_ms, latency_ms)
            if status is not None:
                self.statuses[status] += 1
                self.latencies.append(latency_ms)
            if error is not None:
                self.errors[error] += 1
            if self.out is not None:
                self.out.write(line + "\n")

    def worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"User-Agent": "slipway-loadgen", "Accept": "*/*"}
        try:
            while self.claim():
                t = time.time()
                start = time.perf_counter()
                status: int | None = None
                error: str | None = None
                # A kept-alive connection the server has closed meanwhile is retried once on
                # a new one, as browsers and urllib3 do for a GET; any other error counts.
                for attempt in (1, 2):
                    reused = conn is not None
                    current = conn = conn or self.connection()
                    try:
                        current.request("GET", self.path, headers=headers)
                        response = current.getresponse()
                        response.read()
                        status = response.status
                        if response.will_close:
                            current.close()
                            conn = None
                        break
                    except (OSError, http.client.HTTPException) as exc:
                        current.close()
                        conn = None
                        if reused and attempt == 1 and isinstance(exc, STALE_ERRORS):
                            continue
                        error = f"{type(exc).__name__}: {exc}"[:200]
                        break
                self.record(t, (time.perf_counter() - start) * 1000, status, error)
                if error is not None:
                    self.stop.wait(ERROR_BACKOFF_S)
        finally:
            if conn is not None:
                conn.close()

    def summary(self) -> dict[str, Any]:
        ended = time.time()
        duration = max(ended - self.started, 1e-9)
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        lat = sorted(self.latencies)
        return {
            "url": self.config.url,
            "connect": f"{self.target[0]}:{self.target[1]}",
            "concurrency": self.config.concurrency,
            "total": self.total,
            "ok": ok,
            "failed": self.total - ok,
            "by_status": {str(s): n for s, n in sorted(self.statuses.items())},
            "errors": [{"error": e, "count": n} for e, n in self.errors.most_common(5)],
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "longest_wait_ms": round(self.longest_ms, 3),
            "started": round(self.started, 6),
            "ended": round(ended, 6),
            "duration_s": round(duration, 3),
            "rps": round(self.total / duration, 1),
        }


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values (latencies of requests that got a response)."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 3)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT end the run cleanly (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(config: Config) -> dict[str, Any]:
    """Run the load, write --out and --summary if given, and return the summary."""
    config.check()
    with contextlib.ExitStack() as stack:
        out = None
        if config.out:
            out = stack.enter_context(open(config.out, "w", encoding="utf-8"))
        state = _Run(config, out)
        stack.enter_context(_stop_on_signals(state.stop))
        threads = [
            threading.Thread(target=state.worker, name=f"loadgen-{i}", daemon=True)
            for i in range(config.concurrency)
        ]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            if time.monotonic() >= state.deadline or (
                config.stop_file and os.path.exists(config.stop_file)
            ):
                state.stop.set()
            if state.stop.wait(0.1):
                break
        # a request in flight ends within its timeout
        join_by = time.monotonic() + config.timeout + 1
        for thread in threads:
            thread.join(max(0.0, join_by - time.monotonic()))
        with state.lock:
            summary = state.summary()
    if config.summary:
        Path(config.summary).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="http(s)://host[:port]/path to GET")
    parser.add_argument("--connect", help="ADDR[:PORT] to dial instead of resolving the URL's host")
    parser.add_argument("--cacert", help="CA bundle (PEM) for https")
    parser.add_argument("--concurrency", type=int, default=4, help="connections (default 4)")
    parser.add_argument(
        "--duration", type=float, default=10.0, help=f"seconds (default 10, max {MAX_DURATION_S:g})"
    )
    parser.add_argument(
        "--max-requests", type=int, default=100_000, help=f"request budget (at most {MAX_REQUESTS})"
    )
    parser.add_argument("--rate", type=float, help="requests per second, all connections together")
    parser.add_argument(
        "--no-catch-up",
        action="store_true",
        help="under --rate, skip the slots a stall missed instead of sending them in a burst",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per request (default 5 s)")
    parser.add_argument("--out", help="JSON lines, one per request")
    parser.add_argument("--summary", help="summary JSON file")
    parser.add_argument("--stop-file", help="stop as soon as this file exists")
    return parser


def parse(argv: list[str] | None = None) -> Config:
    """The run the command line asks for (Config.check, in run, refuses an unbounded one)."""
    args = _parser().parse_args(argv)
    return Config(
        url=args.url,
        connect=args.connect,
        cacert=args.cacert,
        concurrency=args.concurrency,
        duration=args.duration,
        max_requests=args.max_requests,
        rate=args.rate,
        catch_up=not args.no_catch_up,
        timeout=args.timeout,
        out=args.out,
        summary=args.summary,
        stop_file=args.stop_file,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        summary = run(parse(argv))
    except ValueError as exc:
        _parser().error(str(exc))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
