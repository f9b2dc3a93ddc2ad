#!/usr/bin/env python3
"""App throughput: Gunicorn (2 x CPU + 1 Uvicorn workers) against one plain Uvicorn process.

With the test services (tools/test-services.sh, started here if needed) it migrates a fresh
bench database, starts each server on a free 127.0.0.1 port, and drives
``GET /health/ready`` and ``POST /api/jobs`` with wrk (fixed duration and connections,
after a short warm-up). Requests go only to the servers it started; everything is bounded
in time and cleaned up (servers stopped, bench database dropped, its Redis db flushed).

    python bench/app_bench.py            # table on stdout
    python bench/app_bench.py --json     # one JSON object on stdout (logs on stderr)

Without wrk (and no apt-get to install it) a bounded asyncio/httpx client is used instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "tools" / "test-services.sh"
BENCH_DB = "slipway_bench"
BENCH_REDIS_DB = 4
POST_BODY = json.dumps(
    {"kind": "text", "text": "the quick brown fox jumps over the lazy dog " * 20, "iterations": 10}
)
ENDPOINTS = {
    "health_ready": ("GET", "/health/ready"),
    "post_jobs": ("POST", "/api/jobs"),
}
START_TIMEOUT = 60
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:slipway_app.gunicorn_conf"]
UVICORN = [sys.executable, "-m", "uvicorn", "slipway_app.main:app", "--host", "127.0.0.1"]


def log(msg: str) -> None:
    print(f"app_bench: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_services() -> dict[str, str]:
    proc = subprocess.run(
        [str(SERVICES), "start"], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"app_bench: test services did not start:\n{proc.stderr[-2000:]}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def prepare_database(admin_url: str) -> str:
    import psycopg

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    return admin_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"


def drop_database(admin_url: str) -> None:
    import psycopg

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("installing wrk (apt-get)")
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "wrk"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        timeout=300,
        check=False,
    )
    return shutil.which("wrk")


class Server:
    """One app server subprocess in its own process group, output to a log file."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], port: int, workers: int
    ) -> None:
        self.name = name
        self.port = port
        self.workers = workers
        self.log = Path(tempfile.mkstemp(prefix=f"app_bench-{name}-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"app_bench: {self.name} exited; see {self.log}")
            # Every worker must have finished starting, not just the first to answer.
            started = self.log.read_text(errors="replace").count("Application startup complete")
            if started >= self.workers:
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=2)
                    if r.status_code == 200:
                        return
            time.sleep(0.2)
        raise SystemExit(f"app_bench: {self.name} not ready after {START_TIMEOUT}s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.log.unlink()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not m:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?timeout (\d+)", out)
    return {
        "rps": round(rps, 1),
        "p50_ms": round(_ms(pct["50"]), 3),
        "p99_ms": round(_ms(pct["99"]), 3),
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "timeouts": int(errors.group(1)) if errors else 0,
    }


def run_wrk(
    wrk: str, url: str, method: str, duration: int, connections: int, threads: int
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if method == "POST":
            script.write(
                'wrk.method = "POST"\n'
                f"wrk.body = {json.dumps(POST_BODY)}\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
    try:
        args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
        args += ["--timeout", "5s", "-s", script.name, url]
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=duration + 30, check=True
        )
    finally:
        os.unlink(script.name)
    return parse_wrk(proc.stdout)


def run_httpx(url: str, method: str, duration: int, connections: int) -> dict[str, float]:
    """Fallback load generator: ``connections`` asyncio clients for ``duration`` seconds."""
    import httpx

    latencies: list[float] = []
    bad = 0

    async def client(deadline: float) -> None:
        nonlocal bad
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(timeout=5, limits=limits) as c:
            while time.monotonic() < deadline:
                t = time.perf_counter()
                try:
                    if method == "POST":
                        r = await c.post(
                            url, content=POST_BODY, headers={"content-type": "application/json"}
                        )
                    else:
                        r = await c.get(url)
                    ok = r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t) * 1000)
                bad += 0 if ok else 1

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(client(start + duration) for _ in range(connections)))
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    latencies.sort()
    n = len(latencies)
    return {
        "rps": round(n / elapsed, 1),
        "p50_ms": round(latencies[n // 2], 3) if n else 0.0,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))], 3) if n else 0.0,
        "requests": n,
        "non_2xx": bad,
        "timeouts": 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be 1..120 and --warmup 0..30")

    cpus = len(os.sched_getaffinity(0))
    workers = 2 * cpus + 1
    services = start_services()
    admin = services["SLIPWAY_TEST_DATABASE_URL"]
    redis_url = services["SLIPWAY_TEST_REDIS_URL"].rsplit("/", 1)[0] + f"/{BENCH_REDIS_DB}"
    database_url = prepare_database(admin)
    flush_redis(redis_url)
    wrk = ensure_wrk()
    tool = "wrk" if wrk else "httpx"
    log(f"load generator: {tool}; {args.duration}s x {args.connections} connections")

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    base_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    base_env.update(
        SLIPWAY_ENV="test",
        SLIPWAY_DATABASE_URL=database_url,
        SLIPWAY_REDIS_URL=redis_url,
        SLIPWAY_RELEASE_ID="bench",
        SLIPWAY_LOG_LEVEL="INFO",  # production-like: one JSON access line per request
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "slipway_app.cli", "migrate", "upgrade"],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if migrate.returncode != 0:
        raise SystemExit(f"app_bench: migrate failed: {migrate.stderr[-2000:]}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    metrics_dir = tempfile.mkdtemp(prefix="app_bench-prom-")
    targets: dict[str, tuple[list[str], dict[str, str]]] = {}
    gport, uport = free_port(), free_port()
    targets["gunicorn"] = (
        [*GUNICORN, "slipway_app.main:app"],
        {
            **base_env,
            "SLIPWAY_BIND": f"127.0.0.1:{gport}",
            "SLIPWAY_WORKERS": str(workers),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        },
    )
    targets["uvicorn"] = (
        [*UVICORN, "--port", str(uport), "--no-access-log"],
        base_env,
    )
    try:
        for name, (cmd, env) in targets.items():
            port = gport if name == "gunicorn" else uport
            server = Server(name, cmd, env, port, workers if name == "gunicorn" else 1)
            try:
                server.wait_ready()
                results[name] = {}
                for key, (method, path) in ENDPOINTS.items():
                    url = f"http://127.0.0.1:{port}{path}"
                    if wrk:
                        if args.warmup:
                            run_wrk(wrk, url, method, args.warmup, args.connections, args.threads)
                        r = run_wrk(wrk, url, method, args.duration, args.connections, args.threads)
                    else:
                        if args.warmup:
                            run_httpx(url, method, args.warmup, args.connections)
                        r = run_httpx(url, method, args.duration, args.connections)
                    results[name][key] = r
                    log(f"{name:8} {method} {path}: {r}")
            finally:
                server.stop()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            flush_redis(redis_url)
        with contextlib.suppress(Exception):
            drop_database(admin)

    ratio = {
        key: round(results["gunicorn"][key]["rps"] / max(results["uvicorn"][key]["rps"], 0.001), 2)
        for key in ENDPOINTS
    }
    report = {
        "tool": tool,
        "duration_s": args.duration,
        "connections": args.connections,
        "threads": args.threads,
        "cpus": cpus,
        "gunicorn_workers": workers,
        "post_body_bytes": len(POST_BODY),
        "results": results,
        "ratio_rps_gunicorn_over_uvicorn": ratio,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    header = f"{'server':<22}{'endpoint':<20}{'rps':>10}{'p50 ms':>10}{'p99 ms':>10}{'non2xx':>8}"
    print(header)
    print("-" * len(header))
    for name, label in (("gunicorn", f"gunicorn ({workers} workers)"), ("uvicorn", "uvicorn (1)")):
        for key, (method, path) in ENDPOINTS.items():
            r = results[name][key]
            print(
                f"{label:<22}{method + ' ' + path:<20}{r['rps']:>10.1f}{r['p50_ms']:>10.2f}"
                f"{r['p99_ms']:>10.2f}{int(r['non_2xx']):>8}"
            )
    for key, (method, path) in ENDPOINTS.items():
        print(f"ratio gunicorn/uvicorn rps, {method} {path}: {ratio[key]:.2f}")
    print(f"({tool}, {args.duration}s, {args.connections} connections, {cpus} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
