"""The sandbox's settings and its state file: VMs, their clusters and addresses, under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from tools.sandbox.host import SandboxError, progress

REPO = Path(__file__).resolve().parents[2]
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
LOCK_TIMEOUT_S = 600.0  # the longest another sandbox command may hold the state (a base build)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


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
    return lock.read().strip() or "another sandbox command"


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
