"""Small HTTP GET client (TCP or a Unix socket) and a bounded poll loop, for Slipway's modules.

Standard library only: the managed hosts have Debian's python3 and nothing else. Modules import
it as ``from ansible.module_utils.slipway_http import get, poll``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# The most body bytes read from one response: a health page is small, a wrong one may not be.
MAX_BODY = 1024 * 1024


class HttpRequestError(Exception):
    """The request got no HTTP answer (connection, TLS, timeout or protocol error)."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    latency_ms: float


class PollResult(NamedTuple):
    ok: bool
    attempts: list[Any]
    elapsed: float


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix stream socket; the URL's host only names the Host header."""

    def __init__(self, socket_path: str, host: str, timeout: float) -> None:
        super().__init__(host, timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def where(url: str, unix_socket: str | None = None) -> str:
    """How an operator names the target: the URL, and the socket when one is used."""
    return f"{url} over the Unix socket {unix_socket}" if unix_socket else url


def get(
    url: str,
    path: str = "/",
    *,
    unix_socket: str | None = None,
    timeout: float = 5.0,
    validate_certs: bool = True,
    ca_path: str | None = None,
    headers: dict[str, str] | None = None,
    max_body: int = MAX_BODY,
) -> Response:
    """GET ``path`` from ``url`` (scheme://host[:port][/prefix]); over ``unix_socket`` when given
    (plain HTTP there, the URL's host is the Host header). Returns status, headers, at most
    ``max_body`` body bytes and the latency in milliseconds; raises HttpRequestError when no
    HTTP answer came (refused, missing socket, TLS failure, timeout, broken response)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpRequestError(f"{url!r} is not an http:// or https:// URL with a host")
    target = parts.path.rstrip("/") + (path if path.startswith("/") else "/" + path)
    host = parts.netloc.rpartition("@")[2]
    conn: http.client.HTTPConnection
    if unix_socket:
        conn = _UnixHTTPConnection(unix_socket, host, timeout)
    elif parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca_path)
        if not validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(
            "GET",
            target,
            headers={"Host": host, "Accept": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        body = resp.read(max_body)
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, latency_ms)
    except (OSError, http.client.HTTPException) as exc:
        seconds = time.monotonic() - started
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise HttpRequestError(
            f"GET {target} on {where(url, unix_socket)} failed after {seconds:.1f} s: {reason}"
        ) from exc
    finally:
        conn.close()


def poll(
    attempt: Callable[[], Any],
    passed: Callable[[Any], bool],
    *,
    deadline: float,
    interval: float = 0.5,
    successes: int = 1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PollResult:
    """Call ``attempt()`` until ``passed(result)`` is true ``successes`` times in a row, or until
    ``deadline`` seconds have gone by (the first attempt always runs). Returns whether it
    passed, every attempt's result in order, and the seconds spent. Bounded in time and in
    count (never more attempts than the deadline allows at the interval, plus the passes)."""
    interval = max(interval, 0.01)
    successes = max(successes, 1)
    max_attempts = int(max(deadline, 0) / interval) + successes + 1
    start = clock()
    attempts: list[Any] = []
    streak = 0
    while len(attempts) < max_attempts:
        result = attempt()
        attempts.append(result)
        streak = streak + 1 if passed(result) else 0
        if streak >= successes:
            return PollResult(True, attempts, round(clock() - start, 3))
        remaining = deadline - (clock() - start)
        if remaining <= 0:
            break
        sleep(min(interval, remaining))
    return PollResult(False, attempts, round(clock() - start, 3))
