#!/usr/bin/env python3
"""Local Debian 12 VMs (systemd-nspawn machines) for `make sandbox` and Molecule.

    tools/sandbox.py up [--topology allinone|split] [--cluster NAME --vm NAME:GROUP,GROUP ...]
                        [--inventory PATH|-] [--json]
    tools/sandbox.py status [--cluster NAME|--all] [--json]
    tools/sandbox.py restart --cluster NAME VM      # halt and boot again, disk kept
    tools/sandbox.py down [--cluster NAME|--all] [--purge]
    tools/sandbox.py ssh VM [COMMAND ...]

Each VM boots systemd as PID 1 from an overlay over one cached, read-only
Debian 12 base (mmdebstrap), gets a static address on a private bridge, and is
reached over SSH as root with a key kept in the state directory. VMs come in
named clusters (the default one, `sandbox`, backs `inventories/sandbox`;
Molecule scenarios use their own), so several sets can run at once.
`down` removes every trace (mounts, processes, cgroups, and with the last
cluster the bridge, the NAT rules and the apt cache proxy); only the base image
and the package cache stay, unless `--purge`. Must run as root.

The recipe and its measured figures are in ../shared/SANDBOX.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("SLIPWAY_SANDBOX_DIR", "/var/lib/slipway-sandbox"))
BRIDGE = "slipbr0"
NETWORK = ipaddress.ip_network("10.231.0.0/24")
HOST_ADDRESS = "10.231.0.1"
FIRST_VM_HOST = 10
APT_PROXY_PORT = 3142
MIRRORS = ("deb.debian.org", "security.debian.org")
RULE_TAG = "slipway-sandbox"
CGROUP_HIERARCHIES = ("systemd", "unified", "memory")
HOST_PACKAGES = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "iptables": "iptables",
    "apt-cacher-ng": "apt-cacher-ng",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
BASE_PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,iproute2,ca-certificates"
DEFAULT_CLUSTER = "sandbox"
ALL_GROUPS = ("lb", "web", "worker", "db", "redis", "gpu", "monitoring")
TOPOLOGIES = {
    "allinone": {"slipway-aio": ["lb", "web", "worker", "db", "redis", "monitoring"]},
    "split": {
        "slipway-lb": ["lb", "monitoring"],
        "slipway-app": ["web", "worker", "redis"],
        "slipway-db": ["db"],
    },
}
BOOT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
STARTED = time.monotonic()


class SandboxError(Exception):
    """A failure an operator can act on: main() prints the sentence and exits 2."""


# --- small helpers ---------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(
    argv: list[str], *, check: bool = True, capture: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise SandboxError(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}): {' '.join(detail)}"
        )
    return proc


@dataclass
class Vm:
    name: str
    cluster: str
    address: str
    groups: list[str] = field(default_factory=list)
    pid: int = 0

    @property
    def dir(self) -> Path:
        return STATE_DIR / "vms" / self.name

    @property
    def root(self) -> Path:
        return self.dir / "root"


@dataclass
class State:
    vms: dict[str, Vm] = field(default_factory=dict)

    @classmethod
    def load(cls) -> State:
        path = STATE_DIR / "state.json"
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls({name: Vm(**vm) for name, vm in raw.get("vms", {}).items()})

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_DIR / "state.json.tmp"
        tmp.write_text(json.dumps({"vms": {n: asdict(v) for n, v in self.vms.items()}}, indent=2))
        tmp.replace(STATE_DIR / "state.json")

    def cluster(self, name: str) -> list[Vm]:
        return [vm for vm in self.vms.values() if vm.cluster == name]


@contextlib.contextmanager
def locked() -> Iterator[State]:
    """The state file, held under an exclusive lock (clusters may be changed concurrently)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = State.load()
        try:
            yield state
        finally:
            state.save()


def allocate_address(taken: set[str]) -> str:
    """The lowest free VM address on the bridge network."""
    for host in list(NETWORK.hosts())[FIRST_VM_HOST - 1 :]:
        if str(host) not in taken:
            return str(host)
    raise SandboxError(f"no free address left on {NETWORK}: run `down` on a cluster first")


def parse_vm_spec(spec: str) -> tuple[str, list[str]]:
    """`name:group,group` -> (name, groups), refusing unknown groups and bad names."""
    name, _, groups_text = spec.partition(":")
    if not name or not all(c.isalnum() or c == "-" for c in name) or len(name) > 40:
        raise SandboxError(f"VM name {name!r} must be 1-40 letters, digits or hyphens")
    groups = [g for g in groups_text.split(",") if g]
    unknown = sorted(set(groups) - set(ALL_GROUPS))
    if unknown:
        raise SandboxError(f"VM {name}: unknown group(s) {', '.join(unknown)}; use {ALL_GROUPS}")
    return name, groups


# --- host checks ---------------------------------------------------------------------------


def preflight() -> None:
    if os.geteuid() != 0:
        raise SandboxError("the sandbox boots systemd-nspawn VMs and needs root: run it with sudo")
    missing = sorted({pkg for cmd, pkg in HOST_PACKAGES.items() if shutil.which(cmd) is None})
    if missing:
        progress(f"installing host packages: {', '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise SandboxError(
                    f"could not install {', '.join(missing)} ({proc.stderr.strip()[-200:]}); "
                    f"install them with apt-get and try again"
                )
    if "overlay" not in Path("/proc/filesystems").read_text():
        run(["modprobe", "overlay"], check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise SandboxError("the kernel has no overlayfs (modprobe overlay failed)")
    if not Path("/sys/class/net").exists() or not Path("/proc/sys/net/ipv4/ip_forward").exists():
        raise SandboxError("this kernel has no network namespaces/bridging the sandbox can use")
    for hierarchy in CGROUP_HIERARCHIES:
        if not Path(f"/sys/fs/cgroup/{hierarchy}").is_dir():
            raise SandboxError(f"cgroup hierarchy /sys/fs/cgroup/{hierarchy} is missing")


def ssh_key() -> Path:
    key = STATE_DIR / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slipway-sandbox", "-f", str(key)]
        )
    return key


# --- base image ------------------------------------------------------------------------------


def base_recipe(pubkey: str) -> list[str]:
    """mmdebstrap's customize hooks; their text is hashed to know when to rebuild."""
    proxy = f'Acquire::http::Proxy "http://{HOST_ADDRESS}:{APT_PROXY_PORT}/";'
    sources = (
        "deb http://deb.debian.org/debian bookworm main\\n"
        "deb http://deb.debian.org/debian bookworm-updates main\\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\\n"
    )
    return [
        'chroot "$1" systemctl enable systemd-networkd ssh',
        f'mkdir -p "$1/root/.ssh" && echo "{pubkey}" > "$1/root/.ssh/authorized_keys"'
        ' && chmod 700 "$1/root/.ssh" && chmod 600 "$1/root/.ssh/authorized_keys"',
        'printf "127.0.0.1 localhost\\n::1 localhost ip6-localhost\\n" > "$1/etc/hosts"',
        ': > "$1/etc/machine-id"',
        f'printf "{sources}" > "$1/etc/apt/sources.list"; rm -f "$1/etc/apt/sources.list.d/"*',
        f"echo '{proxy}' > \"$1/etc/apt/apt.conf.d/01proxy\"",
        "if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then"
        ' cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"'
        ' && chroot "$1" update-ca-certificates >/dev/null; fi',
        'rm -f "$1"/etc/ssh/ssh_host_*',
    ]


def ensure_base(pubkey: str) -> float:
    """Build the base root filesystem when missing or its recipe changed; seconds spent."""
    hooks = base_recipe(pubkey)
    extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    digest = hashlib.sha256(
        "\n".join([BASE_PACKAGES, *hooks, *(p.read_text() for p in extra_cas)]).encode()
    ).hexdigest()
    base, stamp = STATE_DIR / "base", STATE_DIR / "base.recipe"
    if base.is_dir() and stamp.exists() and stamp.read_text() == digest:
        return 0.0
    if any(STATE_DIR.glob("vms/*/root")) and base.is_dir():
        progress("base recipe changed, but VMs still use the old base: keeping it")
        return 0.0
    started = time.monotonic()
    progress("building the Debian 12 base image with mmdebstrap (once; ~40 s)")
    tmp = STATE_DIR / "base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    argv = ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "--quiet"]
    argv += [f"--customize-hook={hook}" for hook in hooks]
    argv += ["bookworm", str(tmp), "http://deb.debian.org/debian"]
    run(argv, timeout=1200)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    stamp.write_text(digest)
    spent = time.monotonic() - started
    progress(f"base image ready in {spent:.0f} s")
    return spent


# --- network and apt proxy -----------------------------------------------------------------


def iptables_rules() -> list[tuple[str, list[str]]]:
    """(table, rule) pairs: NAT and forwarding only to the Debian mirror on 80/443."""
    mirrors: set[str] = set()
    for name in MIRRORS:
        with contextlib.suppress(OSError):
            mirrors.update(str(a[4][0]) for a in socket.getaddrinfo(name, 80, socket.AF_INET))
    tag = ["-m", "comment", "--comment", RULE_TAG]
    rules: list[tuple[str, list[str]]] = [
        (
            "filter",
            [
                "FORWARD",
                "-o",
                BRIDGE,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
                *tag,
            ],
        ),
    ]
    # VM to VM on the bridge (bridged frames cross iptables when br_netfilter is loaded).
    rules.append(("filter", ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", *tag]))
    for ip in sorted(mirrors):
        port_match = ["-p", "tcp", "-m", "multiport", "--dports", "80,443"]
        rules.append(
            ("filter", ["FORWARD", "-i", BRIDGE, "-d", ip, *port_match, "-j", "ACCEPT", *tag])
        )
        rules.append(
            (
                "nat",
                [
                    "POSTROUTING",
                    "-s",
                    str(NETWORK),
                    "-d",
                    ip,
                    *port_match,
                    "-j",
                    "MASQUERADE",
                    *tag,
                ],
            )
        )
    rules.append(("filter", ["FORWARD", "-i", BRIDGE, "-j", "DROP", *tag]))
    return rules


def ensure_network() -> None:
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        progress(f"creating bridge {BRIDGE} {HOST_ADDRESS}/{NETWORK.prefixlen}")
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    wanted = iptables_rules()
    present = [
        run(["iptables", "-w", "-t", t, "-C", *r], check=False).returncode == 0 for t, r in wanted
    ]
    if not all(present) or len(tagged_rules()) != len(wanted):
        remove_rules()  # order matters (the DROP is last): rewrite them all
        for table, rule in wanted:
            run(["iptables", "-w", "-t", table, "-A", *rule])


def tagged_rules() -> list[tuple[str, str]]:
    """(table, rule spec) for every iptables rule the sandbox added."""
    found = []
    for table in ("filter", "nat"):
        listing = run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
        found += [(table, line) for line in listing.splitlines() if RULE_TAG in line]
    return found


def remove_rules() -> None:
    for table, spec in tagged_rules():
        argv = spec.split()
        argv[0] = "-D"
        run(["iptables", "-w", "-t", table, *[a.strip('"') for a in argv]], check=False)


def remove_network() -> None:
    remove_rules()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "link", "del", BRIDGE], check=False)


def apt_proxy_pid() -> int:
    pidfile = STATE_DIR / "acng" / "pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if process_alive(pid):
            return pid
    return 0


def ensure_apt_proxy() -> None:
    if apt_proxy_pid():
        return
    acng = STATE_DIR / "acng"
    conf = acng / "conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/apt-cacher-ng", conf)
    for sub in ("cache", "log"):
        (acng / sub).mkdir(parents=True, exist_ok=True)
    shutil.chown(acng / "cache", "apt-cacher-ng", "apt-cacher-ng")
    shutil.chown(acng / "log", "apt-cacher-ng", "apt-cacher-ng")
    (conf / "backends_debian").write_text("http://deb.debian.org/debian/\n")
    (conf / "zz_slipway.conf").write_text(
        f"CacheDir: {acng / 'cache'}\nLogDir: {acng / 'log'}\nPort: {APT_PROXY_PORT}\n"
        f"BindAddress: {HOST_ADDRESS}\nForeGround: 1\nSocketPath: {acng / 'socket'}\n"
    )
    progress(f"starting apt-cacher-ng on {HOST_ADDRESS}:{APT_PROXY_PORT}")
    with (acng / "log" / "stdout.log").open("a") as out:
        proc = subprocess.Popen(
            ["/usr/sbin/apt-cacher-ng", "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (acng / "pid").write_text(f"{proc.pid}\n")
    wait_for(lambda: port_open(HOST_ADDRESS, APT_PROXY_PORT), 10, "apt-cacher-ng to listen")


def stop_apt_proxy() -> None:
    pid = apt_proxy_pid()
    if pid:
        stop_process(pid, 5)
    (STATE_DIR / "acng" / "pid").unlink(missing_ok=True)


# --- processes -------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (PID 1 here reaps late) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def stop_process(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SandboxError(f"timed out after {timeout:.0f} s waiting for {what}")


def vm_leader(vm: Vm) -> int:
    """PID of the VM's systemd (the nspawn process's child), 0 when it is not running."""
    if not vm.pid or not process_alive(vm.pid):
        return 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{vm.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
    return 0


def vm_state(vm: Vm) -> str:
    """`running`, `degraded`, `starting`, ... as the VM's systemd says, or `down`."""
    leader = vm_leader(vm)
    if not leader:
        return "down"
    proc = run(
        [
            "nsenter",
            "-t",
            str(leader),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "systemctl",
            "is-system-running",
        ],
        check=False,
        timeout=10,
    )
    return proc.stdout.strip() or "starting"


# --- VMs -------------------------------------------------------------------------------------


def prepare_vm(vm: Vm) -> None:
    """Mount the VM's overlay and write its identity (first boot only for keys)."""
    for sub in ("upper", "work", "root"):
        (vm.dir / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(vm.root):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={STATE_DIR / 'base'},upperdir={vm.dir / 'upper'},"
                f"workdir={vm.dir / 'work'}",
                str(vm.root),
            ]
        )
    (vm.root / "etc" / "hostname").write_text(f"{vm.name}\n")
    network = vm.root / "etc" / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={vm.address}/{NETWORK.prefixlen}\n"
        f"Gateway={HOST_ADDRESS}\n"
    )
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {vm.name}", "::1 localhost ip6-localhost"]
    for name in MIRRORS:
        with contextlib.suppress(OSError):
            hosts.append(f"{socket.gethostbyname(name)} {name}")
    (vm.root / "etc" / "hosts").write_text("\n".join(hosts) + "\n")
    if not list((vm.root / "etc" / "ssh").glob("ssh_host_*_key")):
        run(["chroot", str(vm.root), "ssh-keygen", "-A"])


def cgroup_dirs(vm: Vm) -> list[Path]:
    return [Path(f"/sys/fs/cgroup/{h}/slipway-sandbox/{vm.name}") for h in CGROUP_HIERARCHIES]


def boot_vm(vm: Vm) -> None:
    dirs = cgroup_dirs(vm)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)

    def enter_cgroups() -> None:  # runs in the child, before exec
        os.setsid()
        for d in dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    console = (vm.dir / "console.log").open("ab")
    proc = subprocess.Popen(
        [
            "systemd-nspawn",
            "-q",
            "-D",
            str(vm.root),
            "--boot",
            f"--machine={vm.name}",
            "--register=no",
            "--keep-unit",
            f"--network-bridge={BRIDGE}",
            "--console=passive",
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        preexec_fn=enter_cgroups,
    )
    vm.pid = proc.pid


def wait_booted(vm: Vm, key: Path) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    state = "down"
    while time.monotonic() < deadline:
        if not process_alive(vm.pid):
            tail = (vm.dir / "console.log").read_text(errors="replace")[-400:]
            raise SandboxError(f"VM {vm.name} exited during boot: {tail}")
        state = vm_state(vm)
        if state in ("running", "degraded"):
            break
        time.sleep(0.2)
    if state == "degraded":
        leader = vm_leader(vm)
        failed = run(
            [
                "nsenter",
                "-t",
                str(leader),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "systemctl",
                "--failed",
                "--no-legend",
                "--plain",
            ],
            check=False,
        ).stdout.strip()
        raise SandboxError(f"VM {vm.name} booted degraded; failed units: {failed}")
    if state != "running":
        raise SandboxError(
            f"VM {vm.name} did not finish booting in {BOOT_TIMEOUT_S:.0f} s ({state})"
        )
    wait_for(lambda: ssh(vm, key, ["true"], check=False).returncode == 0, 20, f"SSH on {vm.name}")


def ssh_argv(vm: Vm, key: Path) -> list[str]:
    return [
        "ssh",
        "-q",
        "-i",
        str(key),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=2",
        "-o",
        "BatchMode=yes",
        f"root@{vm.address}",
    ]


def ssh(
    vm: Vm, key: Path, command: list[str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run([*ssh_argv(vm, key), *command], check=check, timeout=60)


def halt_vm(vm: Vm) -> None:
    """Stop the VM (clean halt on SIGTERM) and unmount its overlay; its disk stays.

    A VM whose nspawn process died (crashed, or killed) leaves its systemd and
    services running orphaned: they are all in the VM's cgroup, so they are
    killed from there, and the host end of its veth pair is removed.
    """
    if vm.pid:
        stop_process(vm.pid, STOP_TIMEOUT_S)
    vm.pid = 0
    kill_cgroup(cgroup_dirs(vm)[0])
    veth = f"vb-{vm.name}"[:15]
    if Path(f"/sys/class/net/{veth}").exists():
        run(["ip", "link", "del", veth], check=False)
    if os.path.ismount(vm.root) and run(["umount", str(vm.root)], check=False).returncode != 0:
        run(["umount", "-l", str(vm.root)], check=False)
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{vm.name}", ignore_errors=True)
    for d in cgroup_dirs(vm):
        remove_cgroup(d)


def cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    if path.is_dir():
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def kill_cgroup(path: Path) -> None:
    """SIGKILL whatever is left in a VM's cgroup, and wait (bounded) until it is gone."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (pids := [p for p in cgroup_pids(path) if process_alive(p)]) and (
        time.monotonic() < deadline
    ):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def remove_cgroup(path: Path) -> None:
    """Remove a cgroup directory and the ones the VM's systemd made inside it."""
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def destroy_vm(vm: Vm) -> None:
    halt_vm(vm)
    shutil.rmtree(vm.dir, ignore_errors=True)


# --- commands --------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    preflight()
    key = ssh_key()
    wanted = dict(parse_vm_spec(s) for s in args.vm) if args.vm else TOPOLOGIES[args.topology]
    base_s = ensure_base((key.with_suffix(".pub")).read_text().strip())
    ensure_network()
    ensure_apt_proxy()
    with locked() as state:
        for name, groups in wanted.items():
            vm = state.vms.get(name)
            if vm and vm.cluster != args.cluster:
                raise SandboxError(f"VM {name} already belongs to cluster {vm.cluster}")
            if vm is None:
                taken = {v.address for v in state.vms.values()}
                vm = state.vms[name] = Vm(name, args.cluster, allocate_address(taken), groups)
            vm.groups = groups
            if vm_leader(vm):
                progress(f"{name}: already running at {vm.address}")
                continue
            halt_vm(vm)  # a crashed VM: clear what it left, keep its disk
            progress(f"{name}: booting at {vm.address} ({','.join(groups) or 'no group'})")
            prepare_vm(vm)
            boot_vm(vm)
        vms = [state.vms[n] for n in wanted]
    for vm in vms:
        wait_booted(vm, key)
        progress(f"{vm.name}: running, SSH up")
    if args.inventory != "-":
        path = Path(args.inventory) if args.inventory else REPO / "inventories/sandbox/hosts.yml"
        path.write_text(render_inventory(vms, key))
        progress(f"wrote {path}")
    report(vms, key, args.json, extra={"base_build_s": round(base_s, 1)})
    return 0


def render_inventory(vms: list[Vm], key: Path) -> str:
    lines = [
        "---",
        "# Written by tools/sandbox.py up; do not edit (it is rewritten on every up).",
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {key}",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    slipway_sandbox_bridge_address: {HOST_ADDRESS}",
        "  hosts:",
    ]
    for vm in vms:
        lines += [f"    {vm.name}:", f"      ansible_host: {vm.address}"]
    lines.append("  children:")
    for group in ALL_GROUPS:
        members = [vm.name for vm in vms if group in vm.groups]
        lines.append(f"    {group}:")
        lines.append("      hosts:" + ("" if members else " {}"))
        lines += [f"        {name}: {{}}" for name in members]
    return "\n".join(lines) + "\n"


def report(vms: list[Vm], key: Path, as_json: bool, extra: dict[str, object] | None = None) -> None:
    rows = [
        {
            "name": vm.name,
            "instance": vm.name,
            "cluster": vm.cluster,
            "address": vm.address,
            "groups": vm.groups,
            "state": vm_state(vm),
            "user": "root",
            "port": 22,
            "identity_file": str(key),
        }
        for vm in vms
    ]
    if as_json:
        print(json.dumps({"vms": rows, **(extra or {})}, indent=2))
        return
    print(f"{'VM':<20} {'CLUSTER':<18} {'ADDRESS':<14} {'STATE':<10} GROUPS")
    for r in rows:
        groups = ",".join(r["groups"])  # type: ignore[arg-type]
        print(f"{r['name']:<20} {r['cluster']:<18} {r['address']:<14} {r['state']:<10} {groups}")
    if not rows:
        print("(no VMs)")


def selected(state: State, args: argparse.Namespace) -> list[Vm]:
    if args.all:
        return list(state.vms.values())
    return state.cluster(args.cluster)


def cmd_status(args: argparse.Namespace) -> int:
    state = State.load()
    report(selected(state, args), STATE_DIR / "ssh" / "id_ed25519", args.json)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    preflight()
    key = ssh_key()
    with locked() as state:
        vm = state.vms.get(args.name)
        if vm is None or vm.cluster != args.cluster:
            raise SandboxError(f"no VM {args.name} in cluster {args.cluster}")
        progress(f"{vm.name}: halting")
        halt_vm(vm)
        progress(f"{vm.name}: booting again on the same disk")
        prepare_vm(vm)
        boot_vm(vm)
    wait_booted(vm, key)
    report([vm], key, args.json)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SandboxError("`down` needs root, as `up` did: run it with sudo")
    with locked() as state:
        for vm in selected(state, args):
            progress(f"{vm.name}: stopping and removing")
            destroy_vm(vm)
            del state.vms[vm.name]
        last = not state.vms
    if last:
        progress("no VM left: removing bridge, NAT rules and apt proxy")
        stop_apt_proxy()
        remove_network()
        for hierarchy in CGROUP_HIERARCHIES:
            remove_cgroup(Path(f"/sys/fs/cgroup/{hierarchy}/slipway-sandbox"))
        if args.cluster == DEFAULT_CLUSTER or args.all:
            (REPO / "inventories/sandbox/hosts.yml").unlink(missing_ok=True)
        if args.purge:
            progress(f"purging {STATE_DIR}")
            shutil.rmtree(STATE_DIR, ignore_errors=True)
    elif args.purge:
        progress("other clusters are still up: nothing purged")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    vm = State.load().vms.get(args.name)
    if vm is None:
        raise SandboxError(f"no VM named {args.name}: see `tools/sandbox.py status --all`")
    argv = ssh_argv(vm, STATE_DIR / "ssh" / "id_ed25519")
    os.execvp("ssh", [*argv, "-t", *args.command] if not args.command else [*argv, *args.command])
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sandbox.py", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)

    def cluster_args(sp: argparse.ArgumentParser, allow_all: bool = True) -> None:
        sp.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name (default sandbox)")
        if allow_all:
            sp.add_argument("--all", action="store_true", help="every cluster")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    up = sub.add_parser("up", help="create or start VMs (idempotent)")
    cluster_args(up, allow_all=False)
    up.add_argument("--topology", choices=sorted(TOPOLOGIES), default="allinone")
    up.add_argument("--vm", action="append", metavar="NAME:GROUPS", help="instead of --topology")
    up.add_argument("--inventory", help="where to write the inventory ('-' for nowhere)")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="list VMs and their state")
    cluster_args(st)
    st.set_defaults(func=cmd_status)
    rs = sub.add_parser("restart", help="halt a VM and boot it again on the same disk")
    cluster_args(rs, allow_all=False)
    rs.add_argument("name")
    rs.set_defaults(func=cmd_restart)
    dn = sub.add_parser("down", help="stop and remove VMs, leaving nothing behind")
    cluster_args(dn)
    dn.add_argument("--purge", action="store_true", help="also remove the base image and caches")
    dn.set_defaults(func=cmd_down)
    sh = sub.add_parser("ssh", help="SSH into a VM as root")
    sh.add_argument("name")
    sh.add_argument("command", nargs=argparse.REMAINDER)
    sh.set_defaults(func=cmd_ssh)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
