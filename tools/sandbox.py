#!/usr/bin/env python3
"""Local Debian 12 VMs (systemd-nspawn machines) for `make sandbox` and Molecule.

    tools/sandbox.py up [--cluster NAME] [--topology allinone|split | --vm NAME:GROUP,GROUP ...]
                        [--inventory PATH|-] [--json]
    tools/sandbox.py status [--cluster NAME | --all] [--json]
    tools/sandbox.py restart [--cluster NAME] VM     # halt and boot again, disk kept
    tools/sandbox.py down [--cluster NAME | --all] [--purge] [--json]
    tools/sandbox.py ssh VM [COMMAND ...]

Each VM boots systemd as PID 1 from its own overlay over one cached, read-only
Debian 12 base (mmdebstrap, rebuilt only when its recipe changes), gets a static
address on a private bridge, and is reached over SSH as root with a key kept in
the state directory ($SLIPWAY_SANDBOX_DIR, default /var/lib/slipway-sandbox).
VMs come in named clusters so that several sets run at once: the default one,
`sandbox`, backs inventories/sandbox/hosts.yml; Molecule scenarios use their own.
`up` is idempotent: running VMs are left alone, crashed ones are booted again,
and VMs of the cluster that are no longer asked for are removed. `down` removes
every trace (processes, mounts, cgroups, and with the last cluster the bridge,
the iptables rules and the apt cache proxy); only the base image and the package
cache stay, unless `--purge`. Must run as root. Progress goes to stderr, the
result to stdout. Exit status 2 means an operator must act on the message.

A second, independent sandbox on the same machine (the VM tests use one) takes
its own SLIPWAY_SANDBOX_DIR, SLIPWAY_SANDBOX_BRIDGE (default slipbr0) and
SLIPWAY_SANDBOX_NETWORK (default 10.231.0.0/24).

Measured on a 2-core Debian 12 host: base build 37-42 s; up of 1 VM (boot to
`running` + SSH) 1.3 s, of 3 VMs 2.7 s; down 0.6-0.9 s (bench/sandbox_bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("SLIPWAY_SANDBOX_DIR", "/var/lib/slipway-sandbox"))
DEFAULT_INVENTORY = REPO / "inventories" / "sandbox" / "hosts.yml"
# A second, independent sandbox on the same machine needs its own state dir, bridge and subnet.
BRIDGE = os.environ.get("SLIPWAY_SANDBOX_BRIDGE", "slipbr0")
NETWORK = ipaddress.ip_network(os.environ.get("SLIPWAY_SANDBOX_NETWORK", "10.231.0.0/24"))
HOST_ADDRESS = str(next(NETWORK.hosts()))  # the bridge's address, .1
FIRST_VM_HOST = 10  # VMs get .10, .11, ...
APT_PROXY_PORT = 3142
MIRRORS = ("deb.debian.org", "security.debian.org")
# iptables comment and cgroup directory name
RULE_TAG = "slipway-sandbox" if BRIDGE == "slipbr0" else f"slipway-sandbox-{BRIDGE}"
CGROUP_HIERARCHIES = ("systemd", "unified", "memory")
HOST_PACKAGES = {  # command -> Debian package
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "iptables": "iptables",
    "apt-cacher-ng": "apt-cacher-ng",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "nsenter": "util-linux",
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
SSH_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 600.0  # the longest another sandbox.py may hold the state (a base build)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # iptables, apt-cacher-ng, ... live there
STARTED = time.monotonic()


class SandboxError(Exception):
    """A failure an operator can act on: main() prints the sentence and exits 2."""


# --- small helpers ---------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(
    argv: list[str], *, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; with `check`, a failure is a SandboxError."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise SandboxError(f"`{argv[0]}` is not installed on this machine") from exc
    if check and proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise SandboxError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail}")
    return proc


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def require_root(what: str, why: str = "systemd-nspawn, mounts, iptables") -> None:
    if os.geteuid() != 0:
        raise SandboxError(f"{what} needs root ({why}): run it with sudo")


# --- state ----------------------------------------------------------------------------


@dataclass
class Vm:
    name: str
    cluster: str
    address: str
    groups: list[str] = field(default_factory=list)
    pid: int = 0  # the systemd-nspawn process

    @property
    def dir(self) -> Path:
        return STATE_DIR / "vms" / self.name

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def cgroups(self) -> list[Path]:
        return [Path(f"/sys/fs/cgroup/{h}/{RULE_TAG}/{self.name}") for h in CGROUP_HIERARCHIES]


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
    """The state, under an exclusive lock: clusters are changed concurrently (Molecule).

    The holder writes who it is into the lock file, so that a waiter can say
    what it waits for; the wait is bounded.
    """
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / "lock").open("a+") as lock:
        waited, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - waited > LOCK_TIMEOUT_S:
                    raise SandboxError(
                        f"the sandbox state lock is still held after {LOCK_TIMEOUT_S:.0f} s by "
                        f"{lock_holder(lock)}: wait for it, or stop that process"
                    ) from None
                if not told:
                    progress(f"waiting for the sandbox state lock, held by {lock_holder(lock)}")
                    told = True
                time.sleep(0.25)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} ({' '.join(sys.argv[1:4])}) since {time.strftime('%T')}\n")
        lock.flush()
        state = State.load()
        try:
            yield state
        finally:
            if STATE_DIR.is_dir():  # gone after `down --purge`
                state.save()


def lock_holder(lock: IO[str]) -> str:
    lock.seek(0)
    return lock.read().strip() or "another sandbox.py"


def allocate_address(taken: set[str]) -> str:
    """The lowest free VM address on the bridge network."""
    for host in list(NETWORK.hosts())[FIRST_VM_HOST - 1 :]:
        if str(host) not in taken:
            return str(host)
    raise SandboxError(f"no free address left on {NETWORK}: run `down` on a cluster first")


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise SandboxError(
            f"{kind} name {name!r} must be 1-40 lowercase letters, digits or hyphens"
        )
    return name


def parse_vm_spec(spec: str) -> tuple[str, list[str]]:
    """`name:group,group` -> (name, groups), refusing unknown groups and bad names."""
    name, _, groups_text = spec.partition(":")
    check_name("VM", name)
    groups = [g for g in groups_text.split(",") if g]
    unknown = sorted(set(groups) - set(ALL_GROUPS))
    if unknown:
        known = ", ".join(ALL_GROUPS)
        raise SandboxError(f"VM {name}: unknown group(s) {', '.join(unknown)}; known: {known}")
    return name, groups


def wanted_vms(args: argparse.Namespace) -> dict[str, list[str]]:
    """The VMs `up` must leave running: the --vm specs, else the --topology preset."""
    if not args.vm:
        return {name: list(groups) for name, groups in TOPOLOGIES[args.topology].items()}
    wanted: dict[str, list[str]] = {}
    for spec in args.vm:
        name, groups = parse_vm_spec(spec)
        if name in wanted:
            raise SandboxError(f"VM {name} is given twice")
        wanted[name] = groups
    return wanted


def inventory_path(args: argparse.Namespace) -> Path | None:
    """Where `up` writes the inventory: --inventory, else the default cluster's file."""
    if args.inventory == "-":
        return None
    if args.inventory:
        return Path(args.inventory)
    return DEFAULT_INVENTORY if args.cluster == DEFAULT_CLUSTER else None


# --- host checks -----------------------------------------------------------------------


def preflight() -> None:
    """Root, the host packages (installed when missing) and the kernel features."""
    require_root("the sandbox")
    missing = sorted({pkg for cmd, pkg in HOST_PACKAGES.items() if shutil.which(cmd) is None})
    if missing:
        install_host_packages(missing)
    if not kernel_has_overlayfs():
        raise SandboxError("the kernel has no overlayfs (`modprobe overlay` failed): use a kernel")
    for ns in ("mnt", "pid", "net", "uts", "ipc"):
        if not Path(f"/proc/self/ns/{ns}").exists():
            raise SandboxError(f"the kernel has no {ns} namespaces, which systemd-nspawn needs")
    for hierarchy in CGROUP_HIERARCHIES:
        if not Path(f"/sys/fs/cgroup/{hierarchy}").is_dir():
            raise SandboxError(
                f"cgroup hierarchy /sys/fs/cgroup/{hierarchy} is missing: the sandbox expects "
                "the cgroup v1 hybrid layout (systemd, unified and memory hierarchies)"
            )


def install_host_packages(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        raise SandboxError(f"missing host packages {', '.join(packages)} and no apt-get")
    progress(f"installing host packages: {', '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # No service of these packages should start on its own (apt-cacher-ng would take the port).
    policy = Path("/usr/sbin/policy-rc.d")
    guard = not policy.exists()
    if guard:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
            proc = run(argv, check=False, timeout=900, env=env)
            if proc.returncode != 0:
                raise SandboxError(
                    f"could not install {', '.join(packages)} ({proc.stderr.strip()[-200:]}): "
                    f"install them with apt-get and try again"
                )
    finally:
        if guard:
            policy.unlink(missing_ok=True)


def kernel_has_overlayfs() -> bool:
    if "overlay" not in Path("/proc/filesystems").read_text():
        modprobe("overlay")
    return "overlay" in Path("/proc/filesystems").read_text()


def modprobe(module: str) -> None:
    """Load a kernel module if this machine can (it may be built in, or kmod absent)."""
    if shutil.which("modprobe"):
        run(["modprobe", module], check=False)


def ssh_key() -> Path:
    key = STATE_DIR / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", RULE_TAG, "-f", str(key)])
    return key


# --- base image ------------------------------------------------------------------------


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
        'rm -f "$1"/etc/ssh/ssh_host_*',  # every VM makes its own (prepare_vm)
    ]


def mmdebstrap_argv(hooks: list[str], target: Path) -> list[str]:
    argv = ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "--quiet"]
    argv += [f"--customize-hook={hook}" for hook in hooks]
    return [*argv, "bookworm", str(target), "http://deb.debian.org/debian"]


def recipe_digest(hooks: list[str], extra_cas: list[str]) -> str:
    """What the base is built from: the mmdebstrap command and the host's extra CAs."""
    recipe = [*mmdebstrap_argv(hooks, Path("TARGET")), *extra_cas]
    return hashlib.sha256("\n".join(recipe).encode()).hexdigest()


def ensure_base(pubkey: str) -> float:
    """Build the base root filesystem when missing or its recipe changed; seconds spent."""
    hooks = base_recipe(pubkey)
    cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    digest = recipe_digest(hooks, [p.read_text() for p in cas])
    base, stamp = STATE_DIR / "base", STATE_DIR / "base.recipe"
    if base.is_dir() and stamp.exists() and stamp.read_text() == digest:
        return 0.0
    if base.is_dir() and any(STATE_DIR.glob("vms/*/root")):
        progress("base recipe changed, but VMs still run on the old base: keeping it until down")
        return 0.0
    started = time.monotonic()
    progress("building the Debian 12 base image with mmdebstrap (once; ~40 s)")
    tmp = STATE_DIR / "base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    run(mmdebstrap_argv(hooks, tmp), timeout=1200)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    stamp.write_text(digest)
    spent = time.monotonic() - started
    progress(f"base image ready in {spent:.0f} s")
    return spent


# --- network and apt proxy -------------------------------------------------------------


def mirror_addresses() -> dict[str, list[str]]:
    """The IPv4 addresses each Debian mirror name resolves to here (empty if it does not)."""
    found: dict[str, list[str]] = {}
    for name in MIRRORS:
        with contextlib.suppress(OSError):
            infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
            found[name] = sorted({str(info[4][0]) for info in infos})
    return found


def iptables_rules(mirror_ips: list[str]) -> list[tuple[str, list[str]]]:
    """(table, rule) in order: VMs reach each other and the mirror on 80/443, nothing else."""
    tag = ["-m", "comment", "--comment", RULE_TAG]
    web = ["-p", "tcp", "-m", "multiport", "--dports", "80,443"]
    established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
    rules = [
        ("filter", ["FORWARD", "-o", BRIDGE, *established, "-j", "ACCEPT", *tag]),
        # VM to VM: bridged frames cross iptables too when br_netfilter is loaded.
        ("filter", ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", *tag]),
    ]
    for ip in mirror_ips:
        rules.append(("filter", ["FORWARD", "-i", BRIDGE, "-d", ip, *web, "-j", "ACCEPT", *tag]))
    rules.append(("filter", ["FORWARD", "-i", BRIDGE, "-j", "DROP", *tag]))
    for ip in mirror_ips:
        rules.append(
            ("nat", ["POSTROUTING", "-s", str(NETWORK), "-d", ip, *web, "-j", "MASQUERADE", *tag])
        )
    return rules


def ensure_network(mirror_ips: list[str]) -> None:
    """The bridge with the host address, IP forwarding, and exactly our iptables rules."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        progress(f"creating bridge {BRIDGE} {HOST_ADDRESS}/{NETWORK.prefixlen}")
        modprobe("bridge")
        if run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=False).returncode != 0:
            raise SandboxError("cannot create a network bridge: the kernel lacks bridge support")
        run(["ip", "addr", "add", f"{HOST_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    forward, saved = Path("/proc/sys/net/ipv4/ip_forward"), STATE_DIR / "ip_forward.saved"
    if not saved.exists():  # restored by the last `down`
        saved.write_text(forward.read_text())
    forward.write_text("1\n")
    wanted = iptables_rules(mirror_ips)
    present = all(
        run(["iptables", "-w", "-t", t, "-C", *r], check=False).returncode == 0 for t, r in wanted
    )
    if present and len(tagged_rules()) == len(wanted):
        return
    progress(f"iptables: forwarding from {BRIDGE} only to {', '.join(mirror_ips) or 'nowhere'}")
    remove_rules()  # order matters (the DROP comes last): write them all again
    position = {"FORWARD": 0, "POSTROUTING": 0}
    for table, (chain, *spec) in wanted:
        position[chain] += 1  # at the top, ahead of any rule of the host's own
        run(["iptables", "-w", "-t", table, "-I", chain, str(position[chain]), *spec])


def tagged_rules() -> list[tuple[str, list[str]]]:
    """(table, `-A ...` words) for every iptables rule the sandbox added."""
    found = []
    for table in ("filter", "nat"):
        listing = run(["iptables", "-w", "-t", table, "-S"], check=False).stdout
        for line in listing.splitlines():
            words = [word.strip('"') for word in line.split()]
            if any(a == "--comment" and b == RULE_TAG for a, b in itertools.pairwise(words)):
                found.append((table, words))
    return found


def remove_rules() -> None:
    for table, words in tagged_rules():
        run(["iptables", "-w", "-t", table, "-D", *words[1:]], check=False)


def remove_network() -> None:
    remove_rules()
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        run(["ip", "link", "del", BRIDGE], check=False)
    saved = STATE_DIR / "ip_forward.saved"
    if saved.exists():
        Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
        saved.unlink()


def acng_config(acng: Path) -> str:
    """apt-cacher-ng settings laid over its stock ones: own cache, port and address."""
    return (
        f"CacheDir: {acng / 'cache'}\nLogDir: {acng / 'log'}\nPort: {APT_PROXY_PORT}\n"
        f"BindAddress: {HOST_ADDRESS}\nForeGround: 1\nSocketPath: {acng / 'socket'}\n"
        f"PidFile: {acng / 'acng.pid'}\n"
    )


def apt_proxy_pid() -> int:
    """PID of our apt-cacher-ng (checked by its command line), 0 when it is not running."""
    pidfile = STATE_DIR / "acng" / "pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if process_alive(pid) and str(STATE_DIR / "acng" / "conf") in cmdline(pid):
            return pid
    return 0


def ensure_apt_proxy() -> None:
    if apt_proxy_pid():
        return
    acng = STATE_DIR / "acng"
    if port_open(HOST_ADDRESS, APT_PROXY_PORT):
        raise SandboxError(
            f"port {APT_PROXY_PORT} on {HOST_ADDRESS} is taken by a process the sandbox did not "
            "start (a stock apt-cacher-ng service?): stop it and run up again"
        )
    conf = acng / "conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/apt-cacher-ng", conf)
    for sub in ("cache", "log"):
        (acng / sub).mkdir(parents=True, exist_ok=True)
    (conf / "backends_debian").write_text("http://deb.debian.org/debian/\n")
    (conf / "zz_slipway.conf").write_text(acng_config(acng))
    progress(f"starting apt-cacher-ng on {HOST_ADDRESS}:{APT_PROXY_PORT}")
    with (acng / "log" / "stdout.log").open("a") as out:
        proc = subprocess.Popen(
            ["/usr/sbin/apt-cacher-ng", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (acng / "pid").write_text(f"{proc.pid}\n")
    wait_for(lambda: port_open(HOST_ADDRESS, APT_PROXY_PORT), 10, "apt-cacher-ng to listen")


def stop_apt_proxy() -> None:
    pid = apt_proxy_pid()
    if pid:
        progress(f"stopping apt-cacher-ng (pid {pid})")
        stop_process(pid, 5)
    (STATE_DIR / "acng" / "pid").unlink(missing_ok=True)


# --- processes -------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (PID 1 here reaps late) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return []


def nspawn_alive(vm: Vm) -> bool:
    """The VM's nspawn process runs (not a zombie, and not a PID reused by something else)."""
    return bool(vm.pid) and process_alive(vm.pid) and f"--machine={vm.name}" in cmdline(vm.pid)


def stop_process(pid: int, timeout: float) -> None:
    """SIGTERM, wait (bounded; a zombie counts as stopped), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(SandboxError):
        wait_for(lambda: not process_alive(pid), timeout, f"pid {pid} to stop")
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(SandboxError):
            wait_for(lambda: not process_alive(pid), 2, f"pid {pid} to die")
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def cgroup_pids(path: Path) -> list[int]:
    pids: list[int] = []
    if path.is_dir():
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
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


# --- VMs -------------------------------------------------------------------------------


def vm_leader(vm: Vm) -> int:
    """PID of the VM's systemd (the nspawn process's child), 0 when there is none."""
    if not nspawn_alive(vm):
        return 0
    with contextlib.suppress(OSError, ValueError):
        for task in Path(f"/proc/{vm.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
    return 0


def in_vm(vm: Vm, command: list[str], timeout: float = 10) -> str:
    """A command's stdout, run in the VM's namespaces through its systemd ('' if not up)."""
    leader = vm_leader(vm)
    if not leader:
        return ""
    argv = ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", *command]
    with contextlib.suppress(SandboxError):
        return run(argv, check=False, timeout=timeout).stdout.strip()
    return ""


def vm_state(vm: Vm) -> str:
    """`running`, `degraded`, `starting`, ... as the VM's systemd says, or `down`."""
    if not nspawn_alive(vm):
        return "down"
    return in_vm(vm, ["systemctl", "is-system-running"]) or "starting"


def prepare_vm(vm: Vm, mirrors: dict[str, list[str]]) -> None:
    """Mount the VM's overlay and write its identity (host keys on first boot only)."""
    for sub in ("upper", "work", "root"):
        (vm.dir / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(vm.root):
        layers = f"lowerdir={STATE_DIR / 'base'},upperdir={vm.dir}/upper,workdir={vm.dir}/work"
        run(["mount", "-t", "overlay", "overlay", "-o", layers, str(vm.root)])
    (vm.root / "etc" / "hostname").write_text(f"{vm.name}\n")
    network = vm.root / "etc" / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={vm.address}/{NETWORK.prefixlen}\n"
        f"Gateway={HOST_ADDRESS}\n"
    )
    (vm.root / "etc" / "hosts").write_text(render_hosts(vm.name, mirrors))


def make_host_keys(vms: list[Vm]) -> None:
    """SSH host keys of its own for each VM booting for the first time.

    The base has none (clones would share them). Ed25519 and ECDSA take
    milliseconds; RSA 3072 takes ~0.7 s of CPU per VM and is left out: sshd
    quietly skips a default host key that does not exist.
    """
    for vm in vms:
        for kind in ("ed25519", "ecdsa"):
            path = vm.root / "etc" / "ssh" / f"ssh_host_{kind}_key"
            if not path.exists():
                run(
                    [
                        "ssh-keygen",
                        "-q",
                        "-t",
                        kind,
                        "-N",
                        "",
                        "-C",
                        f"root@{vm.name}",
                        "-f",
                        str(path),
                    ]
                )


def render_hosts(name: str, mirrors: dict[str, list[str]]) -> str:
    """/etc/hosts for a VM: there is no DNS inside, so the mirrors are named here."""
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {name}", "::1 localhost ip6-localhost"]
    lines += [f"{ips[0]} {mirror}" for mirror, ips in sorted(mirrors.items()) if ips]
    return "\n".join(lines) + "\n"


def boot_vm(vm: Vm) -> None:
    """Start the VM's nspawn in a session and cgroups of its own (it outlives this process)."""
    for d in vm.cgroups:
        d.mkdir(parents=True, exist_ok=True)

    def enter_cgroups() -> None:  # in the child, before exec
        for d in vm.cgroups:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    argv = ["systemd-nspawn", "-q", "-D", str(vm.root), "--boot", f"--machine={vm.name}"]
    argv += ["--register=no", "--keep-unit", f"--network-bridge={BRIDGE}", "--console=passive"]
    with (vm.dir / "console.log").open("ab") as console:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=enter_cgroups,  # this process has no other threads
        )
    vm.pid = proc.pid


def boot_problem(vm: Vm) -> str | None:
    """None while the VM is still booting, '' once running, else what went wrong."""
    if not nspawn_alive(vm):
        tail = (vm.dir / "console.log").read_text(errors="replace").strip()[-400:]
        return f"{vm.name} exited during boot: {tail}"
    state = vm_state(vm)
    if state == "running":
        return ""
    if state == "degraded":
        failed = in_vm(vm, ["systemctl", "--failed", "--no-legend", "--plain"]).splitlines()
        units = ", ".join(line.split()[0] for line in failed if line.split()) or "?"
        return f"{vm.name} booted degraded (failed units: {units})"
    return None


def wait_ready(vms: list[Vm], key: Path) -> None:
    """Wait (bounded) until every VM's systemd says `running` and SSH answers."""
    problems: list[str] = []
    pending = list(vms)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for vm in list(pending):
            problem = boot_problem(vm)
            if problem is None:
                continue
            pending.remove(vm)
            if problem:
                problems.append(problem)
                continue
            try:
                wait_for(functools.partial(ssh_ok, vm, key), SSH_TIMEOUT_S, f"SSH on {vm.name}")
                progress(f"{vm.name}: running, SSH up")
            except SandboxError as exc:
                problems.append(str(exc))
        time.sleep(0.2 if pending else 0)
    problems += [
        f"{vm.name} did not finish booting in {BOOT_TIMEOUT_S:.0f} s ({vm_state(vm)})"
        for vm in pending
    ]
    if problems:
        raise SandboxError("; ".join(problems) + ": see `status`, `ssh` or console.log")


def halt_vm(vm: Vm) -> None:
    """Stop the VM (a clean halt on SIGTERM) and unmount its overlay; its disk stays.

    A VM whose nspawn process died (crashed, or killed) leaves its systemd and
    services running orphaned: they are all in the VM's cgroup, so they are
    killed from there (which also takes its network namespace and veth away).
    """
    if nspawn_alive(vm):
        stop_process(vm.pid, STOP_TIMEOUT_S)
    vm.pid = 0
    kill_cgroup(vm.cgroups[0])
    veth = f"vb-{vm.name}"
    if len(veth) <= 15 and Path(f"/sys/class/net/{veth}").exists():
        run(["ip", "link", "del", veth], check=False)
    if os.path.ismount(vm.root) and run(["umount", str(vm.root)], check=False).returncode != 0:
        run(["umount", "-l", str(vm.root)], check=False)
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{vm.name}", ignore_errors=True)
    for d in vm.cgroups:
        remove_cgroup(d)


def request_halt(vms: list[Vm]) -> None:
    """SIGTERM to every VM at once (a clean halt), and wait (bounded) until they stopped."""
    running = [vm for vm in vms if nspawn_alive(vm)]
    for vm in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(vm.pid, signal.SIGTERM)
    with contextlib.suppress(SandboxError):
        wait_for(lambda: not any(map(nspawn_alive, running)), STOP_TIMEOUT_S, "VMs to halt")


def destroy_vms(vms: list[Vm]) -> None:
    """Halt VMs (in parallel) and remove everything of theirs, disks included."""
    request_halt(vms)
    for vm in vms:
        progress(f"{vm.name}: halted; removing")
        halt_vm(vm)  # SIGKILL for any that did not halt; cgroups, overlay
        shutil.rmtree(vm.dir, ignore_errors=True)


def ssh_argv(vm: Vm, key: Path) -> list[str]:
    options = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "ConnectTimeout=2"]
    options += ["BatchMode=yes", "LogLevel=ERROR"]
    return ["ssh", "-i", str(key), *(f"-o{o}" for o in options), f"root@{vm.address}"]


def ssh_ok(vm: Vm, key: Path) -> bool:
    return run([*ssh_argv(vm, key), "true"], check=False, timeout=10).returncode == 0


# --- output ----------------------------------------------------------------------------


def render_inventory(vms: list[Vm], key: Path) -> str:
    """The Ansible inventory of a cluster: every group listed, empty ones too."""
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


def vm_row(vm: Vm, key: Path, state: str) -> dict[str, object]:
    """One VM as `--json` prints it (the keys Molecule's instance config needs included)."""
    return {
        "name": vm.name,
        "instance": vm.name,
        "cluster": vm.cluster,
        "address": vm.address,
        "groups": vm.groups,
        "state": state,
        "user": "root",
        "port": 22,
        "identity_file": str(key),
    }


def report(vms: list[Vm], as_json: bool, extra: dict[str, object] | None = None) -> None:
    key = STATE_DIR / "ssh" / "id_ed25519"
    states = {vm.name: vm_state(vm) for vm in vms}
    if as_json:
        rows = [vm_row(vm, key, states[vm.name]) for vm in vms]
        print(json.dumps({"vms": rows, **(extra or {})}, indent=2))
        return
    print(f"{'VM':<20} {'CLUSTER':<20} {'ADDRESS':<14} {'STATE':<10} GROUPS")
    for vm in vms:
        groups = ",".join(vm.groups) or "-"
        print(f"{vm.name:<20} {vm.cluster:<20} {vm.address:<14} {states[vm.name]:<10} {groups}")
    if not vms:
        print("(no VMs)")


# --- commands --------------------------------------------------------------------------


def claim(state: State, name: str, cluster: str, groups: list[str]) -> Vm:
    """The state's entry for a VM of this cluster, with an address of its own."""
    vm = state.vms.get(name)
    if vm and vm.cluster != cluster:
        raise SandboxError(f"VM {name} belongs to cluster {vm.cluster}: pick another name")
    if vm is None:
        taken = {v.address for v in state.vms.values()}
        vm = state.vms[name] = Vm(name, cluster, allocate_address(taken))
    vm.groups = groups
    return vm


def cmd_up(args: argparse.Namespace) -> int:
    wanted = wanted_vms(args)
    preflight()
    key = ssh_key()
    booted: list[Vm] = []
    with locked() as state:
        base_s = ensure_base(key.with_suffix(".pub").read_text().strip())
        mirrors = mirror_addresses()
        ensure_network(sorted({ip for ips in mirrors.values() for ip in ips}))
        ensure_apt_proxy()
        extra = [vm for vm in state.cluster(args.cluster) if vm.name not in wanted]
        if extra:
            progress(f"{args.cluster}: removing VMs no longer asked for")
            destroy_vms(extra)
            for vm in extra:
                del state.vms[vm.name]
        vms = [claim(state, name, args.cluster, groups) for name, groups in wanted.items()]
        for vm in vms:
            if nspawn_alive(vm):
                progress(f"{vm.name}: already up at {vm.address}")
                continue
            halt_vm(vm)  # a crashed VM: clear what it left, keep its disk
            prepare_vm(vm, mirrors)
            booted.append(vm)
        make_host_keys(booted)
        for vm in booted:
            progress(f"{vm.name}: booting at {vm.address} ({','.join(vm.groups) or 'no group'})")
            boot_vm(vm)
    wait_ready(vms, key)
    path = inventory_path(args)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_inventory(vms, key))
        progress(f"wrote {path}")
    facts = {"booted": [vm.name for vm in booted], "base_build_s": round(base_s, 1)}
    report(vms, args.json, extra=facts)
    return 0


def selected(state: State, args: argparse.Namespace) -> list[Vm]:
    return list(state.vms.values()) if args.all else state.cluster(args.cluster)


def cmd_status(args: argparse.Namespace) -> int:
    require_root("status", "it asks each VM's systemd through nsenter")
    report(selected(State.load(), args), args.json)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    preflight()
    key = ssh_key()
    with locked() as state:
        vm = state.vms.get(args.name)
        if vm is None or vm.cluster != args.cluster:
            raise SandboxError(f"no VM {args.name} in cluster {args.cluster}: see `status --all`")
        progress(f"{vm.name}: halting")
        halt_vm(vm)
        progress(f"{vm.name}: booting again on the same disk")
        prepare_vm(vm, mirror_addresses())
        make_host_keys([vm])
        boot_vm(vm)
    wait_ready([vm], key)
    report([vm], args.json)
    return 0


def teardown_shared(purge: bool) -> None:
    """With no VM left: the bridge, the iptables rules, the apt proxy, the cgroup parents."""
    progress("no VM left: removing bridge, iptables rules and apt proxy")
    stop_apt_proxy()
    remove_network()
    for hierarchy in CGROUP_HIERARCHIES:
        remove_cgroup(Path(f"/sys/fs/cgroup/{hierarchy}/{RULE_TAG}"))
    for root in STATE_DIR.glob("vms/*/root"):  # a VM the state lost track of
        if os.path.ismount(root):
            run(["umount", "-l", str(root)], check=False)
    shutil.rmtree(STATE_DIR / "vms", ignore_errors=True)
    if purge:
        progress(f"purging the base image, the package cache and the SSH key from {STATE_DIR}")
        for name in ("base", "base.tmp", "acng", "ssh", "vms"):
            shutil.rmtree(STATE_DIR / name, ignore_errors=True)
        for name in ("base.recipe", "ip_forward.saved"):
            (STATE_DIR / name).unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    require_root("down")
    removed: list[str] = []
    with locked() as state:
        vms = selected(state, args)
        progress(f"stopping {', '.join(vm.name for vm in vms) or 'no VM'}")
    request_halt(vms)  # without the lock: a big VM may take seconds to halt
    with locked() as state:
        vms = [state.vms[vm.name] for vm in vms if vm.name in state.vms]
        destroy_vms(vms)
        for vm in vms:
            del state.vms[vm.name]
            removed.append(vm.name)
        left = len(state.vms)
        if not left:
            teardown_shared(args.purge)
        elif args.purge:
            progress(f"{left} VM(s) of other clusters still up: nothing purged")
    if (args.all or args.cluster == DEFAULT_CLUSTER) and DEFAULT_INVENTORY.exists():
        DEFAULT_INVENTORY.unlink()
    if args.json:
        print(json.dumps({"removed": removed, "vms_left": left}, indent=2))
    else:
        print(f"removed {len(removed)} VM(s): {', '.join(removed) or '-'}; {left} left")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    vm = State.load().vms.get(args.name)
    if vm is None:
        raise SandboxError(f"no VM named {args.name}: see `tools/sandbox.py status --all`")
    argv = ssh_argv(vm, STATE_DIR / "ssh" / "id_ed25519")
    os.execvp("ssh", [*argv, *args.command])
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandbox.py",
        description="Local Debian 12 VMs (systemd-nspawn) in named clusters.",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, allow_all: bool = True) -> None:
        sp.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name (default sandbox)")
        if allow_all:
            sp.add_argument("--all", action="store_true", help="every cluster")
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    up = sub.add_parser("up", help="create or start a cluster's VMs (idempotent)")
    common(up, allow_all=False)
    up.add_argument("--topology", choices=sorted(TOPOLOGIES), default="allinone")
    up.add_argument("--vm", action="append", metavar="NAME:GROUPS", help="instead of --topology")
    up.add_argument("--inventory", help="inventory to write ('-': none; default: the sandbox's)")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="list VMs and their state")
    common(st)
    st.set_defaults(func=cmd_status)
    rs = sub.add_parser("restart", help="halt a VM and boot it again on the same disk")
    common(rs, allow_all=False)
    rs.add_argument("name")
    rs.set_defaults(func=cmd_restart)
    dn = sub.add_parser("down", help="stop and remove VMs, leaving nothing behind")
    common(dn)
    dn.add_argument("--purge", action="store_true", help="also remove the base image and caches")
    dn.set_defaults(func=cmd_down)
    sh = sub.add_parser("ssh", help="SSH into a VM as root")
    sh.add_argument("name")
    sh.add_argument("command", nargs=argparse.REMAINDER)
    sh.set_defaults(func=cmd_ssh)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([*path, *(d for d in SBIN if d not in path)])
    try:
        if hasattr(args, "cluster"):
            check_name("cluster", args.cluster)
        return int(args.func(args))
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
