"""site.yml on one fresh sandbox VM: cold converge time, then the idempotent
re-run's time and changed count; then requests/s through nginx (HTTPS) beside
Gunicorn directly, on the same VM, in one run.

    python3 bench/converge_bench.py [--json] [--keep]

Uses a cluster of its own (`bench-converge`) and Pebble on the host; the VM is
removed at the end unless --keep. Needs root and the controller venv.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CLUSTER, VM, DOMAIN = "bench-converge", "bench-aio", "bench.sandbox.test"
GROUPS = "lb,web,worker,db,redis,monitoring"
WRK_SECONDS, WRK_CONNECTIONS = 10, 32


def log(message: str) -> None:
    print(f"converge-bench: {message}", file=sys.stderr, flush=True)


def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {proc.stderr[-1500:]}{proc.stdout[-1500:]}")
    return proc


def converge(inventory: Path) -> tuple[float, int, str]:
    """Run site.yml; seconds, changed count over all hosts, and the recap."""
    env = dict(
        os.environ, PATH=f"{BIN}:{os.environ['PATH']}", ANSIBLE_CONFIG=str(REPO / "ansible.cfg")
    )
    started = time.monotonic()
    proc = sh([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml"], cwd=REPO, env=env)
    seconds = time.monotonic() - started
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", proc.stdout))
    recap = proc.stdout[proc.stdout.rfind("PLAY RECAP") :].strip()
    return seconds, changed, recap


def wrk(url: str, hosts_line: str | None) -> dict[str, float]:
    """requests/s and latency percentiles of a bounded wrk run (in a private mount
    namespace whose /etc/hosts names the VM, so TLS gets the right SNI)."""
    argv = ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency", url]
    if hosts_line:
        hosts = Path(tempfile.mkdtemp()) / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text() + hosts_line + "\n")
        argv = [
            "unshare",
            "-m",
            "sh",
            "-c",
            f'mount --bind {hosts} /etc/hosts && exec "$@"',
            "wrk",
            *argv,
        ]
    out = sh(argv, timeout=WRK_SECONDS + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": round(rps, 1),
        "p50_ms": round(pct("50"), 2),
        "p99_ms": round(pct("99"), 2),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the VM up")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sh(["apt-get", "install", "-y", "-qq", "wrk"])
    sandbox = [sys.executable, "-m", "tools.sandbox"]  # run with cwd=REPO
    subprocess.run([*sandbox, "down", "--cluster", CLUSTER], cwd=REPO, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    inventory = work / "inventory"
    inventory.mkdir()
    shutil.copytree(REPO / "inventories/sandbox/group_vars", inventory / "group_vars")
    (inventory / "host_vars").mkdir()
    try:
        log("booting a fresh VM")
        up = json.loads(
            sh(
                [
                    *sandbox,
                    "up",
                    "--cluster",
                    CLUSTER,
                    "--json",
                    "--inventory",
                    str(inventory / "hosts.yml"),
                    f"--vm={VM}:{GROUPS}",
                ],
                cwd=REPO,
            ).stdout
        )
        address = up["vms"][0]["address"]
        # The bench's own end of the bridge (.1), the only address let in to port 8000.
        controller = ipaddress.ip_network(f"{address}/24", strict=False).network_address + 1
        (inventory / "host_vars" / f"{VM}.yml").write_text(
            f"---\nslipway_domains: [{DOMAIN}]\n"
            "# Gunicorn also on TCP so that the bench can reach it without nginx; the\n"
            "# peer-only firewall keeps 8000 closed on an all-in-one host, so open it to\n"
            "# the bench's address alone.\n"
            "app_web_listen_tcp: true\n"
            "base_firewall_host_rules:\n"
            f"  - {{name: bench, port: 8000, proto: tcp, sources: ['{controller}/32']}}\n"
            "# Let the load through: the per-IP limit would turn most of it into 429s.\n"
            "nginx_rate_limit: false\n"
        )
        sh(
            [
                sys.executable,
                str(REPO / "tools" / "pebble.py"),
                "start",
                f"--domain={DOMAIN}={address}",
            ]
        )
        log("cold converge of site.yml")
        cold_s, cold_changed, _ = converge(inventory)
        log(f"cold: {cold_s:.0f} s, changed={cold_changed}; second run")
        warm_s, warm_changed, recap = converge(inventory)
        log(f"second: {warm_s:.0f} s, changed={warm_changed}")
        result: dict[str, object] = {
            "site_cold_converge_s": round(cold_s, 1),
            "site_cold_changed": cold_changed,
            "site_second_converge_s": round(warm_s, 1),
            "site_second_changed": warm_changed,
        }
        via_nginx = wrk(f"https://{DOMAIN}/health/live", f"{address} {DOMAIN}")
        direct = wrk(f"http://{address}:8000/health/live", None)
        result["health_live_via_nginx_https"] = via_nginx
        result["health_live_direct_gunicorn"] = direct
        result["nginx_over_direct_rps_ratio"] = round(via_nginx["rps"] / direct["rps"], 2)
        print(f"{'site.yml on 1 VM':<34} {'seconds':>8} {'changed':>8}", file=sys.stderr)
        print(f"{'cold converge':<34} {cold_s:8.1f} {cold_changed:8d}", file=sys.stderr)
        print(f"{'second run (idempotent)':<34} {warm_s:8.1f} {warm_changed:8d}", file=sys.stderr)
        print(f"{'GET /health/live':<34} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}", file=sys.stderr)
        for name, r in (
            ("direct Gunicorn (baseline)", direct),
            ("through nginx, HTTPS", via_nginx),
        ):
            print(
                f"{name:<34} {r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}", file=sys.stderr
            )
        print(f"nginx/direct rps ratio: {result['nginx_over_direct_rps_ratio']}", file=sys.stderr)
        if warm_changed:
            print(recap, file=sys.stderr)
        if args.json:
            print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            subprocess.run(
                [*sandbox, "down", "--cluster", CLUSTER], cwd=REPO, capture_output=True, check=False
            )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
