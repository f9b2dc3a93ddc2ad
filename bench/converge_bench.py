"""How fast site.yml converges on fresh sandbox VMs, beside the bare apt work it does and
beside Ansible's plain strategy, on 1, 3 and 6 hosts, in one run. Also draws seconds against
hosts (bench/results/converge_scaling.png).

    python3 bench/converge_bench.py [--json] [--keep] [--only aio,floor,fleet]
                                    [--packages-from ADDRESS]

Parts (default: all, one after another; never two converges at once):
  aio    one all-in-one VM (cluster bench-conv1): a cold converge, the idempotent re-run with
         the default strategy (ansible.cfg: slipway_linear, over Mitogen) and again with
         ANSIBLE_STRATEGY=linear, then --check --diff; then requests/s through nginx (HTTPS)
         beside Gunicorn directly (wrk; its host_vars open Gunicorn's TCP port to the bench
         and turn nginx's rate limit off, which the 3- and 6-host clusters do not).
  floor  a second fresh VM (bench-convfloor), given the converged VM's apt proxy file: the
         seconds of `apt-get update` and of one `apt-get install --no-install-recommends` of
         every package the converge left installed that a fresh VM lacks (the roles' own
         packages, what they pulled in and the recommends of those roles that take them), so
         that both VMs end with the same packages. Its package list comes from the aio VM, or,
         without aio, from the converged VM at --packages-from.
  fleet  fresh clusters of 3 (bench-conv3) and 6 (bench-conv6) VMs: cold, then idempotent.
The JSON carries the figures of the parts that ran; ratios between parts need both.

Each cluster is removed when its figures are taken, also on failure, unless --keep; the
bench's own clusters are removed at the start too. Every command's output goes to
.cache/converge-bench/logs/<name>.log. Needs root and the controller venv.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import ipaddress
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
KEY = "/var/lib/slipway-sandbox/ssh/id_ed25519"
WORK = REPO / ".cache" / "converge-bench"
PNG = REPO / "bench" / "results" / "converge_scaling.png"
CALLBACKS = REPO / "bench" / "callbacks"  # slipway_task_times: each task's seconds
PARTS = ("aio", "floor", "fleet")
WRK_SECONDS, WRK_CONNECTIONS = 10, 32
CONVERGE_TIMEOUT_S, APT_TIMEOUT_S = 3600, 1800
PROXY_FILE = "/etc/apt/apt.conf.d/01slipway-proxy"  # written by roles/base (base_apt_proxy)
Env = dict[str, str]


@dataclass(frozen=True)
class Layout:
    """A cluster of the bench: its name, its domain on Pebble, its VMs (name -> groups)."""

    cluster: str
    domain: str
    vms: dict[str, str]

    @property
    def lb(self) -> str:
        return next(name for name, groups in self.vms.items() if "lb" in groups.split(","))


AIO = Layout("bench-conv1", "conv1.bench.sandbox.test",
             {"conv1-aio": "lb,web,worker,db,redis,monitoring"})  # fmt: skip
FLOOR = Layout("bench-convfloor", "", {"convfloor": ""})
FLEET = {
    3: Layout("bench-conv3", "conv3.bench.sandbox.test",
              {"conv3-lb": "lb,monitoring", "conv3-app": "web,worker", "conv3-data": "db,redis"}),
    6: Layout("bench-conv6", "conv6.bench.sandbox.test",
              {"conv6-lb": "lb", "conv6-web1": "web", "conv6-web2": "web",
               "conv6-worker": "worker", "conv6-db": "db", "conv6-data": "redis,monitoring"}),
}  # fmt: skip
CLUSTERS = {"aio": [AIO], "floor": [FLOOR], "fleet": list(FLEET.values())}


@dataclass(frozen=True)
class Run:
    """One ansible-playbook run: seconds, changed count over all hosts, the changed tasks,
    the controller's CPU seconds (ansible-playbook and every process under it) and the task
    results over all hosts (ok + skipped: the work the controller queued)."""

    seconds: float
    changed: int
    changed_tasks: list[str]
    cpu_s: float
    host_tasks: int
    task_seconds: list[dict[str, Any]]  # {role, task, action, seconds} in run order

    def slowest(self, n: int = 8) -> list[str]:
        """The n slowest tasks, "seconds role : task", slowest first."""
        rows = sorted(self.task_seconds, key=lambda row: -row["seconds"])[:n]
        return [f"{row['seconds']:.1f} s {row['role'] or '(play)'} : {row['task']}" for row in rows]

    def by_role(self) -> dict[str, float]:
        """Seconds per role (the plays' own checks under "(play)"), the heaviest first."""
        sums: dict[str, float] = {}
        for row in self.task_seconds:
            role = row["role"] or "(play)"
            sums[role] = sums.get(role, 0.0) + row["seconds"]
        return {role: round(sec, 1) for role, sec in sorted(sums.items(), key=lambda kv: -kv[1])}


def log(message: str) -> None:
    print(f"converge-bench: {message}", file=sys.stderr, flush=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it, parents first. Mitogen's workers start
    sessions of their own, so neither a process group nor a session holds them, and they
    outlive a killed ansible-playbook."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        victim = todo.pop(0)
        todo += children.get(victim, [])
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


class Bench:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.up_clusters: list[Layout] = []
        # ansible.cfg alone sets Ansible up: no ANSIBLE_* of the caller's (ANSIBLE_STRATEGY...),
        # but for the bench's own callback, which times each task (bench/callbacks/).
        cfg = ansible_cfg()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.update(
            PATH=f"{BIN}:{os.environ['PATH']}",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_CALLBACK_PLUGINS=":".join(
                [str(REPO / cfg.get("defaults", "callback_plugins")), str(CALLBACKS)]
            ),
            ANSIBLE_CALLBACKS_ENABLED=",".join(
                [cfg.get("defaults", "callbacks_enabled"), "slipway_task_times"]
            ),
        )

    def sh(
        self, name: str, argv: list[str], timeout: float, stdin: str = "", env: Env | None = None
    ) -> tuple[float, str, float]:
        """Run argv in the repository root, its output to WORK/logs/NAME.log; its seconds,
        stdout and CPU seconds (argv and every process it waited for). A non-zero exit stops
        the bench with the log's last lines; a bench stopped first (a timeout, Ctrl-C,
        SIGTERM) kills the command and every process under it."""
        path = WORK / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with subprocess.Popen(argv, cwd=REPO, env=env or self.env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as proc:  # fmt: skip
            try:
                out, err = proc.communicate(stdin, timeout=timeout)
            except BaseException as exc:
                kill_tree(proc.pid)
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise SystemExit(f"converge-bench: {name} ran past {timeout:.0f} s") from exc
                raise
        seconds = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        path.write_text(f"$ {shlex.join(argv)}\n{out}\n{err}")
        if proc.returncode != 0:
            tail = "\n".join((out + err).splitlines()[-40:])
            raise SystemExit(
                f"converge-bench: {name} exited {proc.returncode}; read {path}; "
                f"its last lines:\n{tail}"
            )
        return seconds, out, cpu

    def up(self, layout: Layout) -> dict[str, str]:
        """Boot the cluster's VMs, write its inventory (domain on the lb, on Pebble); their
        addresses."""
        inventory = WORK / layout.cluster
        shutil.copytree(REPO / "inventories/sandbox/group_vars", inventory / "group_vars")
        (inventory / "host_vars").mkdir()
        argv = [sys.executable, "-m", "tools.sandbox", "up", "--cluster", layout.cluster,
                "--json", "--inventory", str(inventory / "hosts.yml")]  # fmt: skip
        argv += [f"--vm={name}:{groups}" for name, groups in layout.vms.items()]
        log(f"booting {layout.cluster}: {', '.join(layout.vms)}")
        self.up_clusters.append(layout)
        out = self.sh(f"up-{layout.cluster}", argv, 1800)[1]
        vms = {vm["name"]: vm["address"] for vm in json.loads(out)["vms"]}
        if layout.domain:
            (inventory / "host_vars" / f"{layout.lb}.yml").write_text(
                f"---\nslipway_domains: [{layout.domain}]\n"
            )
            pebble = [sys.executable, "tools/pebble.py", "start"]
            self.sh(
                f"pebble-{layout.cluster}",
                [*pebble, f"--domain={layout.domain}={vms[layout.lb]}"],
                300,
            )
        return vms

    def down(self, layout: Layout, *, start: bool = False) -> None:
        if self.keep and not start:
            log(f"--keep: leaving {layout.cluster} up")
            return
        argv = [sys.executable, "-m", "tools.sandbox", "down", "--cluster", layout.cluster]
        subprocess.run(argv, cwd=REPO, capture_output=True, check=False, timeout=600)
        if layout in self.up_clusters:
            self.up_clusters.remove(layout)
            log(f"removed {layout.cluster}")

    def playbook(self, name: str, layout: Layout, *args: str, strategy: str = "") -> Run:
        argv = [str(BIN / "ansible-playbook"), "-i", str(WORK / layout.cluster), "site.yml", *args]
        env = dict(self.env, ANSIBLE_STRATEGY=strategy) if strategy else self.env
        said = f", ANSIBLE_STRATEGY={strategy}" if strategy else ""
        log(f"{name}: {shlex.join(argv[1:])}{said}")
        times = WORK / "logs" / f"{name}.tasks.jsonl"
        times.unlink(missing_ok=True)
        env = dict(env, SLIPWAY_TASK_TIMES=str(times))
        seconds, out, cpu = self.sh(name, argv, CONVERGE_TIMEOUT_S, env=env)
        task_seconds = [json.loads(line) for line in times.read_text().splitlines()]
        recap = out[out.rfind("PLAY RECAP") :]
        changed = sum(int(n) for n in re.findall(r"changed=(\d+)", recap))
        host_tasks = sum(int(n) for n in re.findall(r"(?:ok|skipped)=(\d+)", recap))
        found, task = [], ""  # "task [host]" of each changed result
        for line in out.splitlines():
            if m := re.match(r"(TASK|RUNNING HANDLER) \[(.*)\]", line):
                task = m.group(2)
            elif m := re.match(r"changed: \[([^]]+)\]", line):
                found.append(f"{task} [{m.group(1)}]")
        tasks = list(dict.fromkeys(found))
        log(f"{name}: {seconds:.1f} s, changed={changed}, controller CPU {cpu:.1f} s")
        if "cold" not in name:
            for line in tasks:
                log(f"  changed: {line}")
        return Run(round(seconds, 1), changed, tasks, round(cpu, 1), host_tasks, task_seconds)

    def ssh(self, name: str, address: str, command: str, stdin: str = "") -> str:
        argv = ["ssh", "-i", KEY, "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                f"root@{address}", command]  # fmt: skip
        return self.sh(name, argv, APT_TIMEOUT_S, stdin=stdin)[1]


def packages(bench: Bench, name: str, address: str) -> tuple[set[str], set[str]]:
    """(the packages marked manual, every installed package) of a VM."""
    out = bench.ssh(
        name,
        address,
        "apt-mark showmanual; echo --; dpkg-query -W -f='${db:Status-Status} ${Package}\\n'",
    )
    manual, _, installed = out.partition("--\n")
    rows = [line.split() for line in installed.splitlines()]
    return set(manual.split()), {row[1] for row in rows if row[0] == "installed"}


# Run on the floor VM as `bash -s -- PACKAGE...`: the apt work alone, timed on the VM.
APT_WORK = r"""set -eu
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s.%N)
apt-get update -qq
t1=$(date +%s.%N)
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
t2=$(date +%s.%N)
echo "seconds $t0 $t1 $t2"
"""


def measure_floor(
    bench: Bench, floor: str, fresh: tuple[set[str], set[str]], source: str
) -> dict[str, Any]:
    """The apt floor on the fresh VM at `floor` (lists taken before anything ran on it), of
    what the converge left on the converged VM at `source`."""
    manual, installed = packages(bench, "floor-packages-converged", source)
    wanted = sorted(installed - fresh[1])
    proxy = bench.ssh("floor-proxy-read", source, f"cat {PROXY_FILE} 2>/dev/null || true")
    if proxy:
        bench.ssh("floor-proxy-write", floor, f"cat > {PROXY_FILE}", stdin=proxy)
    log(
        f"apt floor: apt-get update, then one install of {len(wanted)} packages "
        f"({len(manual - fresh[0])} of them marked manual by the converge)"
    )
    out = bench.ssh("floor-apt", floor, shlex.join(["bash", "-s", "--", *wanted]), stdin=APT_WORK)
    t0, t1, t2 = (float(t) for t in out.split("seconds ")[-1].split())
    after = packages(bench, "floor-packages-after", floor)[1]
    if after != installed:
        log(
            f"!! the floor VM differs from the converged one: only there "
            f"{sorted(after - installed)}, only on the converged {sorted(installed - after)}"
        )
    return {
        "apt_floor_s": round(t2 - t0, 1),
        "apt_floor_update_s": round(t1 - t0, 1),
        "apt_floor_install_s": round(t2 - t1, 1),
        "apt_floor_packages": len(manual - fresh[0]),
        "apt_floor_packages_installed": len(wanted),
        "apt_floor_same_packages": after == installed,
    }


def wrk(url: str, hosts_line: str | None) -> dict[str, float]:
    """requests/s and latency percentiles of a bounded wrk run (in a private mount
    namespace whose /etc/hosts names the VM, so TLS gets the right SNI)."""
    argv = ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency", url]
    if hosts_line:
        hosts = WORK / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text() + hosts_line + "\n")
        script = f'mount --bind {hosts} /etc/hosts && exec "$@"'
        argv = ["unshare", "-m", "sh", "-c", script, "wrk", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=WRK_SECONDS + 30)
    out = proc.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if proc.returncode != 0 or not rps:
        raise SystemExit(f"converge-bench: wrk {url} failed: {proc.stderr[-800:]}{out[-800:]}")

    def pct(p: str) -> float:
        m = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": round(float(rps.group(1)), 1),
        "p50_ms": round(pct("50"), 2),
        "p99_ms": round(pct("99"), 2),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def measure_aio(bench: Bench, address: str) -> dict[str, Any]:
    vm = AIO.lb
    # The bench's own end of the bridge (.1), the only address let in to port 8000.
    controller = ipaddress.ip_network(f"{address}/24", strict=False).network_address + 1
    with (WORK / AIO.cluster / "host_vars" / f"{vm}.yml").open("a") as host_vars:
        host_vars.write(
            "# Gunicorn also on TCP so that the bench can reach it without nginx; the\n"
            "# peer-only firewall keeps 8000 closed on an all-in-one host, so open it to\n"
            "# the bench's address alone.\n"
            "app_web_listen_tcp: true\n"
            "base_firewall_host_rules:\n"
            f"  - {{name: bench, port: 8000, proto: tcp, sources: ['{controller}/32']}}\n"
            "# Let the load through: the per-IP limit would turn most of it into 429s.\n"
            "nginx_rate_limit: false\n"
        )
    cold = bench.playbook("aio-cold", AIO)
    again = bench.playbook("aio-idempotent", AIO)
    linear = bench.playbook("aio-idempotent-linear", AIO, strategy="linear")
    check = bench.playbook("aio-check-diff", AIO, "--check", "--diff")
    log("wrk: GET /health/live through nginx (HTTPS), then from Gunicorn directly")
    via_nginx = wrk(f"https://{AIO.domain}/health/live", f"{address} {AIO.domain}")
    direct = wrk(f"http://{address}:8000/health/live", None)
    result: dict[str, Any] = {
        "cold_s": cold.seconds,
        "cold_changed": cold.changed,
        "idempotent_s": again.seconds,
        "idempotent_changed": again.changed,
        "idempotent_linear_s": linear.seconds,
        "idempotent_linear_changed": linear.changed,
        "idempotent_linear_cpu_s": linear.cpu_s,
        "mitogen_speedup": round(linear.seconds / again.seconds, 2),
        "check_diff_s": check.seconds,
        "check_diff_changed": check.changed,
        "check_diff_cpu_s": check.cpu_s,
        "hosts_1": fleet_row(cold, again),
        # Where the time goes: the slowest tasks of the cold run, seconds per role of both.
        "cold_slowest_tasks": cold.slowest(),
        "cold_s_by_role": cold.by_role(),
        "idempotent_s_by_role": again.by_role(),
        "health_live_via_nginx_https": via_nginx,
        "health_live_direct_gunicorn": direct,
        "nginx_over_direct_rps_ratio": round(via_nginx["rps"] / direct["rps"], 2),
    }
    for key, run in (("idempotent", again), ("idempotent_linear", linear), ("check_diff", check)):
        if run.changed_tasks:
            result[f"{key}_changed_tasks"] = run.changed_tasks
    return result


def fleet_row(cold: Run, again: Run) -> dict[str, Any]:
    return {
        "cold_s": cold.seconds,
        "cold_changed": cold.changed,
        "idempotent_s": again.seconds,
        "idempotent_changed": again.changed,
        "cold_cpu_s": cold.cpu_s,
        "idempotent_cpu_s": again.cpu_s,
        "idempotent_host_tasks": again.host_tasks,
    }


def ansible_cfg() -> configparser.ConfigParser:
    """The repository's ansible.cfg, as read by the bench."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "ansible.cfg")
    return cfg


def ansible_settings() -> dict[str, Any]:
    """forks and strategy as ansible.cfg sets them (Ansible's defaults where it does not), and
    whether the strategy runs over Mitogen."""
    cfg = ansible_cfg()
    mitogen = (
        subprocess.run(
            [str(BIN / "python3"), "-c", "import ansible_mitogen"], capture_output=True, check=False
        ).returncode
        == 0
    )
    return {
        "forks": cfg.getint("defaults", "forks", fallback=5),
        "strategy": cfg.get("defaults", "strategy", fallback="linear"),
        "mitogen": mitogen,
    }


def machine() -> str:
    """The host's name and CPU model, as /proc/cpuinfo gives it."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return f"{os.uname().nodename} ({model.group(1).strip() if model else 'unknown CPU'})"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    hosts = [n for n in (1, 3, 6) if f"hosts_{n}" in result]
    # Labels above the cold line, below the idempotent one: clear of each other and of the floor.
    for key, label, color, dy in (
        ("cold_s", "cold", "#c44e52", 7),
        ("idempotent_s", "idempotent", "#4c72b0", -13),
    ):
        values = [result[f"hosts_{n}"][key] for n in hosts]
        ax.plot(hosts, values, marker="o", color=color, label=f"{label} converge")
        for n, v in zip(hosts, values, strict=True):
            ax.annotate(
                f"{v:.0f} s",
                (n, v),
                textcoords="offset points",
                xytext=(0, dy),
                ha="center",
                fontsize=8,
            )
    if "apt_floor_s" in result:
        floor = result["apt_floor_s"]
        ax.axhline(
            floor,
            color="#55a868",
            linestyle="--",
            label=f"apt floor, 1 host: {floor:.0f} s "
            f"({result['apt_floor_packages_installed']} packages)",
        )
    ax.set_xticks([1, 3, 6])
    ax.set_xlabel("hosts")
    ax.set_ylabel("seconds")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # room for the top label
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"site.yml converge time vs hosts: {machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"forks={result['forks']}, "
        f"{result['strategy']}, {time.strftime('%Y-%m-%d')}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(r: dict[str, Any]) -> None:
    rows: list[tuple[str, Any, Any]] = [("site.yml", "seconds", "changed")]
    if "cold_s" in r:
        rows += [
            ("1 host, cold", r["cold_s"], r["cold_changed"]),
            (f"1 host, idempotent ({r['strategy']})", r["idempotent_s"], r["idempotent_changed"]),
            (
                "1 host, idempotent (linear, baseline)",
                r["idempotent_linear_s"],
                r["idempotent_linear_changed"],
            ),
            ("  linear over the default", f"{r['mitogen_speedup']}x", ""),
            ("1 host, --check --diff", r["check_diff_s"], r["check_diff_changed"]),
        ]
    if "apt_floor_s" in r:
        name = f"apt floor (update + install, {r['apt_floor_packages_installed']} pkgs)"
        rows += [(name, r["apt_floor_s"], "")]
    if "cold_over_floor" in r:
        rows += [("  cold over the apt floor", f"{r['cold_over_floor']}x", "")]
    for n in (3, 6):
        if f"hosts_{n}" in r:
            row = r[f"hosts_{n}"]
            rows += [
                (f"{n} hosts, cold", row["cold_s"], row["cold_changed"]),
                (f"{n} hosts, idempotent", row["idempotent_s"], row["idempotent_changed"]),
            ]
    if "fleet_6_over_1_cold" in r:
        rows += [
            ("  6 hosts over 1, cold", f"{r['fleet_6_over_1_cold']}x", ""),
            ("  6 hosts over 1, idempotent", f"{r['fleet_6_over_1_idempotent']}x", ""),
        ]
    for name, seconds, changed in rows:
        print(f"{name:<46} {seconds!s:>8} {changed!s:>8}", file=sys.stderr)
    if "cold_slowest_tasks" in r:
        print("1 host, cold: the slowest tasks", file=sys.stderr)
        for line in r["cold_slowest_tasks"]:
            print(f"  {line}", file=sys.stderr)
        for key in ("cold", "idempotent"):
            roles = ", ".join(f"{role} {sec}" for role, sec in r[f"{key}_s_by_role"].items())
            print(f"1 host, {key}: seconds by role: {roles}", file=sys.stderr)
    if "nginx_over_direct_rps_ratio" in r:
        print(f"{'GET /health/live':<46} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}", file=sys.stderr)
        for name, w in (
            ("direct Gunicorn (baseline)", r["health_live_direct_gunicorn"]),
            ("through nginx, HTTPS", r["health_live_via_nginx_https"]),
        ):
            print(
                f"{name:<46} {w['rps']:8.1f} {w['p50_ms']:8.2f} {w['p99_ms']:8.2f}", file=sys.stderr
            )
        print(f"nginx/direct rps ratio: {r['nginx_over_direct_rps_ratio']}", file=sys.stderr)


def measure(bench: Bench, parts: list[str], packages_from: str) -> dict[str, Any]:
    """The parts asked for, one cluster after another; the figures of those that ran."""
    result: dict[str, Any] = ansible_settings()
    aio = bench.up(AIO)[AIO.lb] if "aio" in parts else packages_from
    if "floor" in parts:  # booted before any converge, its packages listed while it is fresh
        floor = bench.up(FLOOR)["convfloor"]
        fresh = packages(bench, "floor-packages-fresh", floor)
    if "aio" in parts:
        result.update(measure_aio(bench, aio))
    if "floor" in parts:
        result.update(measure_floor(bench, floor, fresh, aio))
        bench.down(FLOOR)
    if "aio" in parts:
        bench.down(AIO)
    if "aio" in parts and "floor" in parts:
        result["cold_over_floor"] = round(result["cold_s"] / result["apt_floor_s"], 2)
    for n, layout in FLEET.items() if "fleet" in parts else ():
        bench.up(layout)
        cold = bench.playbook(f"hosts{n}-cold", layout)
        again = bench.playbook(f"hosts{n}-idempotent", layout)
        result[f"hosts_{n}"] = fleet_row(cold, again)
        if again.changed_tasks:
            result[f"hosts_{n}"]["idempotent_changed_tasks"] = again.changed_tasks
        bench.down(layout)
    if "aio" in parts and "fleet" in parts:
        for key in ("cold", "idempotent"):
            ratio = result["hosts_6"][f"{key}_s"] / result["hosts_1"][f"{key}_s"]
            result[f"fleet_6_over_1_{key}"] = round(ratio, 2)
    if "fleet" in parts:
        result["converge_scaling_png"] = str(plot(result, PNG).relative_to(REPO))
    return result


def stopped(signum: int, _: object) -> None:
    log(f"stopped by {signal.Signals(signum).name}: removing the bench's clusters")
    sys.exit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="leave the VMs up")
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of aio,floor,fleet")
    parser.add_argument(
        "--packages-from",
        metavar="ADDRESS",
        help="floor alone: the converged VM whose packages to install",
    )
    args = parser.parse_args()
    parts = [p for p in PARTS if p in args.only.split(",")]
    if not parts or set(args.only.split(",")) - set(PARTS):
        parser.error(f"--only {args.only!r}: a comma list of {', '.join(PARTS)}")
    if "floor" in parts and "aio" not in parts and not args.packages_from:
        parser.error("floor needs a converged VM: run it with aio, or give --packages-from")
    if os.geteuid() != 0:
        raise SystemExit("converge-bench: boots sandbox VMs (systemd-nspawn): run it as root")
    if "aio" in parts and shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    # Teardown also on SIGTERM/SIGHUP (a killed make), as on Ctrl-C; SIGHUP stays ignored
    # under nohup.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, stopped)
    bench = Bench(args.keep)
    for part in parts:
        for layout in CLUSTERS[part]:
            bench.down(layout, start=True)  # left by an earlier run
    shutil.rmtree(WORK, ignore_errors=True)
    started = time.monotonic()
    try:
        result = measure(bench, parts, args.packages_from or "")
    finally:
        for layout in list(bench.up_clusters):
            bench.down(layout)
    result["bench_s"] = round(time.monotonic() - started)
    log(f"done in {result['bench_s']} s; logs in {WORK / 'logs'}")
    table(result)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
