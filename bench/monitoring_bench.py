"""Monitoring on one fresh sandbox VM in every group (gpu too, without a GPU), in one run:
what the monitoring tier costs to converge beside the rest of site.yml, what its processes
hold in memory beside the app stack's, what Prometheus scrapes, and how long an outage of
the app takes to reach the alert receiver with the role's default intervals, beside the
bound those intervals set. Also draws the outage's timeline (bench/results/alert_timeline.png).

    python3 bench/monitoring_bench.py [--json] [--keep]

Uses a cluster of its own (`bench-monitoring`) and Pebble on the host; the VM is removed
at the end unless --keep. Needs root and the controller venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
CLUSTER, VM, DOMAIN = "bench-monitoring", "bench-mon", "bench-mon.sandbox.test"
GROUPS = "lb,web,worker,db,redis,monitoring,gpu"
KEY = "/var/lib/slipway-sandbox/ssh/id_ed25519"
PNG = REPO / "bench" / "results" / "alert_timeline.png"
MONITORING_TAGS = "exporters,nvitop,prometheus"
# The processes of each side, by systemd unit.
MONITORING_UNITS = [
    "prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter",
    "prometheus-node-exporter", "prometheus-postgres-exporter", "prometheus-redis-exporter",
    "slipway-alert-log",
]  # fmt: skip
APP_UNITS = [
    "nginx", "postgresql@15-main", "redis-server", "slipway-web", "slipway-worker@default",
    "slipway-worker@gpu", "slipway-beat",
]  # fmt: skip
# Each wait on the VM stops by itself: the firing notice within FIRE_LIMIT_S of the stop,
# the resolved notice within RESOLVE_LIMIT_S of the start (Alertmanager sends it at its
# next group_interval, 5 min by default).
FIRE_LIMIT_S, RESOLVE_LIMIT_S = 300, 420

# Run on the VM (python3, standard library): stop the app, note when each part of the
# alert path sees it, start it again, note when it resolves. Prints one JSON object.
OUTAGE = r"""
import json, pathlib, subprocess, time, urllib.parse, urllib.request
PROM, AM = "http://127.0.0.1:9090", "http://127.0.0.1:9093"
LOG = pathlib.Path("/var/lib/slipway-alerts/alerts.jsonl")
UNITS = ["slipway-web.socket", "slipway-web.service"]
NAME = "SlipwayAppDown"

def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)

def app_up():
    q = urllib.parse.quote('up{job="app"}')
    res = get(f"{PROM}/api/v1/query?query={q}")["data"]["result"]
    return res[0]["value"][1] if res else None

def state():
    alerts = get(PROM + "/api/v1/alerts")["data"]["alerts"]
    return next((a["state"] for a in alerts if a["labels"]["alertname"] == NAME), "none")

def in_alertmanager():
    return any(a["labels"]["alertname"] == NAME and a["status"]["state"] == "active"
               for a in get(AM + "/api/v2/alerts"))

def lines():
    return LOG.read_text().splitlines() if LOG.exists() else []

def received(status, since):
    return any(a["labels"]["alertname"] == NAME and a["status"] == status
               for line in lines()[since:] for a in json.loads(line)["alerts"])

def watch(t, t0, limit, checks, last):
    while time.time() - t0 < limit and last not in t:
        now = round(time.time() - t0, 2)
        for key, check in checks:
            if key not in t and check():
                t[key] = now
        time.sleep(0.25)

since = len(lines())
down, up = {}, {}
t0 = time.time()
subprocess.run(["systemctl", "stop", *UNITS], check=True)
watch(down, t0, FIRE_LIMIT_S, [
    ("scraped_down", lambda: app_up() == "0"),
    ("pending", lambda: state() in ("pending", "firing")),
    ("firing", lambda: state() == "firing"),
    ("alertmanager", in_alertmanager),
    ("received_firing", lambda: received("firing", since)),
], "received_firing")
t1 = time.time()
subprocess.run(["systemctl", "start", *UNITS], check=True)
watch(up, t1, RESOLVE_LIMIT_S, [
    ("scraped_up", lambda: app_up() == "1"),
    ("prometheus_resolved", lambda: state() == "none"),
    ("received_resolved", lambda: received("resolved", since)),
], "received_resolved")
print(json.dumps({"down": down, "up": up}))
"""

# Run on the VM: the proportional set size (MiB) of each unit's processes.
MEMORY = r"""
import json, pathlib, subprocess, sys
def pss_mib(unit):
    cg = subprocess.run(["systemctl", "show", "-p", "ControlGroup", "--value", unit],
                        capture_output=True, text=True).stdout.strip()
    procs = [pathlib.Path(root + cg + "/cgroup.procs")
             for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")]
    procs = [p for p in procs if cg and p.exists()]
    if not procs:
        return None
    kib = 0
    for pid in procs[0].read_text().split():
        try:
            text = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        kib += sum(int(l.split()[1]) for l in text.splitlines() if l.startswith("Pss:"))
    return round(kib / 1024, 1)
print(json.dumps({u: pss_mib(u) for u in sys.argv[1:]}))
"""


def log(message: str) -> None:
    print(f"monitoring-bench: {message}", file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = 1800, **kw: Any) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO, **kw)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(
            f"monitoring-bench: {shlex.join(argv[:5])} exited {proc.returncode}:\n"
            f"{proc.stdout[-2500:]}{proc.stderr[-1500:]}"
        )
    return proc.stdout


def playbook(inventory: Path, *args: str) -> tuple[float, int]:
    """Seconds and changed count (all hosts) of one ansible-playbook run."""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")  # fmt: skip
    started = time.monotonic()
    out = run([str(BIN / "ansible-playbook"), "-i", str(inventory), *args], env=env)
    seconds = time.monotonic() - started
    return round(seconds, 1), sum(int(n) for n in re.findall(r"changed=(\d+)", out))


def on_vm(address: str, script: str, *args: str, timeout: float = 900) -> Any:
    """A Python script run as root on the VM (its bridge address only); its JSON output."""
    argv = ["ssh", "-i", KEY, "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            f"root@{address}", shlex.join(["python3", "-", *args])]  # fmt: skip
    return json.loads(run(argv, timeout=timeout, input=script).strip().splitlines()[-1])


def prometheus(address: str, query: str) -> list[dict[str, Any]]:
    script = (
        "import json, urllib.parse, urllib.request\n"
        f"q = urllib.parse.quote({query!r})\n"
        "with urllib.request.urlopen('http://127.0.0.1:9090/api/v1/query?query=' + q) as r:\n"
        "    print(json.dumps(json.load(r)['data']['result']))\n"
    )
    result: list[dict[str, Any]] = on_vm(address, script)
    return result


def seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(ms|s|m|h)", duration).groups()  # type: ignore[union-attr]
    return int(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def bounds() -> dict[str, float]:
    """The latest each notice can come, from the prometheus role's defaults: a scrape sees
    the app gone, an evaluation makes the alert pending, it fires at the first evaluation
    after `for:`, and Alertmanager waits group_wait before it sends a new group; a resolve
    is sent at the next group_interval."""
    d = yaml.safe_load((REPO / "roles/prometheus/defaults/main.yml").read_text())
    scrape, evaluation = (
        seconds(d["prometheus_scrape_interval"]),
        seconds(d["prometheus_evaluation_interval"]),
    )
    fire = scrape + evaluation + seconds(d["prometheus_alert_app_down_for"]) + evaluation
    return {
        "scrape_interval_s": scrape,
        "evaluation_interval_s": evaluation,
        "app_down_for_s": seconds(d["prometheus_alert_app_down_for"]),
        "group_wait_s": seconds(d["prometheus_alert_group_wait"]),
        "group_interval_s": seconds(d["prometheus_alert_group_interval"]),
        "firing_bound_s": fire,
        "received_firing_bound_s": fire + seconds(d["prometheus_alert_group_wait"]),
        "received_resolved_bound_s": scrape + evaluation
        + seconds(d["prometheus_alert_group_interval"]),
    }  # fmt: skip


def plot(outage: dict[str, dict[str, float]], bound: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.2), sharex=False)
    for ax, side, limit, title in (
        (top, outage["down"], bound["received_firing_bound_s"], "app stopped at 0 s"),
        (bottom, outage["up"], bound["received_resolved_bound_s"], "app started again at 0 s"),
    ):
        names = list(side)
        ax.barh(names, [side[n] for n in names], color="#4c72b0")
        for i, n in enumerate(names):
            ax.text(side[n], i, f" {side[n]:.0f} s", va="center", fontsize=8)
        ax.axvline(limit, color="#c44e52", linestyle="--", label=f"bound {limit:.0f} s")
        ax.set_title(title, fontsize=9, loc="left")
        ax.invert_yaxis()
        ax.legend(loc="upper right", fontsize=8)
        ax.set_xlim(0, max([limit, *side.values()]) * 1.15)
    bottom.set_xlabel(
        f"seconds (role defaults: scrape {bound['scrape_interval_s']:.0f} s, evaluation "
        f"{bound['evaluation_interval_s']:.0f} s, for {bound['app_down_for_s']:.0f} s, group_wait "
        f"{bound['group_wait_s']:.0f} s, group_interval {bound['group_interval_s']:.0f} s)"
    )
    fig.suptitle("SlipwayAppDown end to end on one sandbox VM", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measure(inventory: Path, address: str) -> dict[str, Any]:
    skip = ["--skip-tags", MONITORING_TAGS]
    log("cold converge of site.yml without the monitoring tier (baseline)")
    base_cold = playbook(inventory, "site.yml", *skip)
    log(f"baseline cold {base_cold}; cold converge of the monitoring tier")
    mon_cold = playbook(inventory, "playbooks/monitoring.yml")
    log(f"monitoring cold {mon_cold}; idempotent runs")
    mon_again = playbook(inventory, "playbooks/monitoring.yml")
    base_again = playbook(inventory, "site.yml", *skip)
    site_again = playbook(inventory, "site.yml")
    result: dict[str, Any] = {
        "converge": {
            "site_without_monitoring_cold_s": base_cold[0],
            "monitoring_tier_cold_s": mon_cold[0],
            "monitoring_tier_cold_changed": mon_cold[1],
            "monitoring_over_site_cold": round(mon_cold[0] / base_cold[0], 2),
            "monitoring_tier_idempotent_s": mon_again[0],
            "monitoring_tier_idempotent_changed": mon_again[1],
            "site_without_monitoring_idempotent_s": base_again[0],
            "site_idempotent_s": site_again[0],
            "site_idempotent_changed": site_again[1],
            "site_idempotent_over_without_monitoring": round(site_again[0] / base_again[0], 2),
        }
    }
    log(f"converge: {result['converge']}")
    memory = on_vm(address, MEMORY, *MONITORING_UNITS, *APP_UNITS)
    mon_mib = sum(memory[u] or 0 for u in MONITORING_UNITS)
    app_mib = sum(memory[u] or 0 for u in APP_UNITS)
    result["memory_pss_mib"] = {
        "by_unit": memory,
        "monitoring": round(mon_mib, 1),
        "app_stack": round(app_mib, 1),
        "monitoring_over_app_stack": round(mon_mib / app_mib, 2),
    }
    log(f"memory: {result['memory_pss_mib']}")

    def value(query: str) -> float:
        rows = prometheus(address, query)
        return round(float(rows[0]["value"][1]), 4) if rows else float("nan")

    result["scrapes"] = {
        "targets": value("count(up)"),
        "samples_per_round": value("sum(scrape_samples_scraped)"),
        "head_series": value("prometheus_tsdb_head_series"),
        "slowest_scrape_s": value("max(scrape_duration_seconds)"),
        "by_job_samples": {
            r["metric"]["job"]: int(float(r["value"][1]))
            for r in prometheus(address, "sum by (job) (scrape_samples_scraped)")
        },
    }
    log(f"scrapes: {result['scrapes']}")
    log(f"the app's outage: stop, wait for the firing notice (<= {FIRE_LIMIT_S} s), start, "
        f"wait for the resolved notice (<= {RESOLVE_LIMIT_S} s)")  # fmt: skip
    script = f"FIRE_LIMIT_S, RESOLVE_LIMIT_S = {FIRE_LIMIT_S}, {RESOLVE_LIMIT_S}\n" + OUTAGE
    outage = on_vm(address, script, timeout=FIRE_LIMIT_S + RESOLVE_LIMIT_S + 120)
    bound = bounds()
    result["alert_path"] = {"measured_s": outage, "bounds_s": bound}
    fired = outage["down"].get("received_firing")
    resolved = outage["up"].get("received_resolved")
    result["alert_path"]["received_firing_over_bound"] = (
        round(fired / bound["received_firing_bound_s"], 2) if fired is not None else None
    )
    result["alert_path"]["received_resolved_over_bound"] = (
        round(resolved / bound["received_resolved_bound_s"], 2) if resolved is not None else None
    )
    result["alert_timeline_png"] = str(plot(outage, bound, PNG).relative_to(REPO))
    return result


def table(r: dict[str, Any]) -> None:
    c, m, a = r["converge"], r["memory_pss_mib"], r["alert_path"]
    down, up, bound = a["measured_s"]["down"], a["measured_s"]["up"], a["bounds_s"]
    rows = [
        ("site.yml without monitoring, cold (baseline)", c["site_without_monitoring_cold_s"], "s"),
        ("monitoring tier, cold", c["monitoring_tier_cold_s"], "s"),
        ("  over the baseline", c["monitoring_over_site_cold"], "x"),
        ("monitoring tier, cold: changed", c["monitoring_tier_cold_changed"], ""),
        ("monitoring tier, idempotent", c["monitoring_tier_idempotent_s"], "s"),
        ("monitoring tier, idempotent: changed", c["monitoring_tier_idempotent_changed"], ""),
        ("site.yml idempotent without monitoring", c["site_without_monitoring_idempotent_s"], "s"),
        ("site.yml idempotent", c["site_idempotent_s"], "s"),
        ("  over the one without monitoring", c["site_idempotent_over_without_monitoring"], "x"),
        ("memory PSS, app stack (baseline)", m["app_stack"], "MiB"),
        ("memory PSS, monitoring", m["monitoring"], "MiB"),
        ("  over the app stack", m["monitoring_over_app_stack"], "x"),
        ("scrape targets", r["scrapes"]["targets"], ""),
        ("samples per scrape round", r["scrapes"]["samples_per_round"], ""),
        ("app stopped -> firing notice received", down.get("received_firing"), "s"),
        ("  bound set by the intervals", bound["received_firing_bound_s"], "s"),
        ("app started -> resolved notice received", up.get("received_resolved"), "s"),
        ("  bound set by the intervals", bound["received_resolved_bound_s"], "s"),
    ]
    for name, value, unit in rows:
        print(f"{name:<44} {value!s:>10} {unit}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="leave the VM up")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("monitoring-bench: boots a sandbox VM (systemd-nspawn): run it as root")
    sandbox = [sys.executable, "-m", "tools.sandbox"]
    subprocess.run([*sandbox, "down", "--cluster", CLUSTER], cwd=REPO, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="slipway-monitoring-bench-"))
    inventory = work / "inventory"
    shutil.copytree(REPO / "inventories/sandbox/group_vars", inventory / "group_vars")
    (inventory / "host_vars").mkdir()
    try:
        started = time.monotonic()
        log("booting a fresh VM")
        up = json.loads(run([*sandbox, "up", "--cluster", CLUSTER, "--json", "--inventory",
                             str(inventory / "hosts.yml"), f"--vm={VM}:{GROUPS}"]))  # fmt: skip
        address = up["vms"][0]["address"]
        (inventory / "host_vars" / f"{VM}.yml").write_text(f"---\nslipway_domains: [{DOMAIN}]\n")
        run([sys.executable, "tools/pebble.py", "start", f"--domain={DOMAIN}={address}"])
        result = measure(inventory, address)
        result["bench_s"] = round(time.monotonic() - started)
        table(result)
        if args.json:
            print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            subprocess.run([*sandbox, "down", "--cluster", CLUSTER], cwd=REPO,
                           capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
