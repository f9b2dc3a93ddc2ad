"""tools/sandbox.py: its logic without root (unit), then the real thing on
systemd-nspawn VMs (marked `vm`, in a cluster of its own): up, honest status,
idempotent up, a crashed VM seen and restarted, and a `down` that leaves nothing
behind."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_vms

REPO = Path(__file__).resolve().parents[2]
SANDBOX = [sys.executable, str(REPO / "tools" / "sandbox.py")]

_spec = importlib.util.spec_from_file_location("sandbox_cli", REPO / "tools" / "sandbox.py")
assert _spec and _spec.loader
sb = importlib.util.module_from_spec(_spec)
sys.modules["sandbox_cli"] = sb
_spec.loader.exec_module(sb)


# --- unit: no root, no VM ----------------------------------------------------------------


def up_args(*argv: str) -> argparse.Namespace:
    return sb.parser().parse_args(["up", *argv])


def test_up_defaults_to_the_all_in_one_vm_of_the_sandbox_cluster() -> None:
    args = up_args()
    assert args.cluster == "sandbox"
    assert sb.wanted_vms(args) == {
        "slipway-aio": ["lb", "web", "worker", "db", "redis", "monitoring"]
    }
    assert sb.inventory_path(args) == REPO / "inventories" / "sandbox" / "hosts.yml"


def test_split_topology_has_three_vms() -> None:
    assert sb.wanted_vms(up_args("--topology", "split")) == {
        "slipway-lb": ["lb", "monitoring"],
        "slipway-app": ["web", "worker", "redis"],
        "slipway-db": ["db"],
    }


def test_vm_specs_replace_the_topology_and_other_clusters_write_no_inventory() -> None:
    args = up_args("--cluster", "molecule-x", "--vm", "a:web,db", "--vm=b")
    assert sb.wanted_vms(args) == {"a": ["web", "db"], "b": []}
    assert sb.inventory_path(args) is None
    assert sb.inventory_path(up_args("--inventory", "-")) is None
    assert sb.inventory_path(up_args("--cluster", "c", "--inventory", "/x.yml")) == Path("/x.yml")


def test_a_vm_given_twice_is_refused() -> None:
    with pytest.raises(sb.SandboxError, match="given twice"):
        sb.wanted_vms(up_args("--vm", "a:web", "--vm", "a:db"))


def test_addresses_do_not_collide_across_clusters() -> None:
    state = sb.State()
    first = sb.claim(state, "a", "one", ["web"])
    second = sb.claim(state, "b", "two", ["db"])
    again = sb.claim(state, "a", "one", ["web", "lb"])
    assert (first.address, second.address) == ("10.231.0.10", "10.231.0.11")
    assert again is first and again.groups == ["web", "lb"]
    with pytest.raises(sb.SandboxError, match="belongs to cluster one"):
        sb.claim(state, "a", "two", [])


def test_inventory_carries_connection_vars_and_the_bridge_address() -> None:
    yaml = pytest.importorskip("yaml")
    vms = [sb.Vm("a", "c", "10.231.0.10", ["lb", "web"]), sb.Vm("b", "c", "10.231.0.11", ["db"])]
    data = yaml.safe_load(sb.render_inventory(vms, Path("/k/id")))["all"]
    assert data["vars"]["ansible_user"] == "root"
    assert data["vars"]["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "UserKnownHostsFile=/dev/null" in data["vars"]["ansible_ssh_common_args"]
    assert data["vars"]["slipway_sandbox_bridge_address"] == "10.231.0.1"
    assert data["hosts"] == {
        "a": {"ansible_host": "10.231.0.10"},
        "b": {"ansible_host": "10.231.0.11"},
    }
    assert set(data["children"]["web"]["hosts"]) == {"a"}
    assert data["children"]["redis"]["hosts"] == {}


def test_only_the_mirror_on_80_443_is_forwarded_and_the_drop_comes_last() -> None:
    rules = sb.iptables_rules(["192.0.2.7"])
    forward = [rule for table, rule in rules if table == "filter"]
    assert all(rule[-4:] == ["-m", "comment", "--comment", "slipway-sandbox"] for _, rule in rules)
    assert "DROP" in forward[-1]
    assert not any("DROP" in rule for rule in forward[:-1])
    accepts = [rule for rule in forward if "-d" in rule]
    assert accepts == [
        [
            "FORWARD",
            *["-i", "slipbr0", "-d", "192.0.2.7", "-p", "tcp", "-m", "multiport"],
            *["--dports", "80,443", "-j", "ACCEPT", "-m", "comment", "--comment"],
            "slipway-sandbox",
        ]
    ]
    nat = [rule for table, rule in rules if table == "nat"]
    assert len(nat) == 1 and "MASQUERADE" in nat[0] and "192.0.2.7" in nat[0]
    assert [t for t, _ in sb.iptables_rules([])].count("nat") == 0


def test_vm_hosts_file_names_localhost_itself_and_the_mirrors() -> None:
    text = sb.render_hosts("vm1", {"deb.debian.org": ["192.0.2.7", "192.0.2.8"]})
    assert text.splitlines() == [
        "127.0.0.1 localhost",
        "127.0.1.1 vm1",
        "::1 localhost ip6-localhost",
        "192.0.2.7 deb.debian.org",
    ]


def test_apt_proxy_config_is_private() -> None:
    conf = sb.acng_config(Path("/s/acng"))
    assert "CacheDir: /s/acng/cache\n" in conf
    assert "BindAddress: 10.231.0.1\n" in conf and "Port: 3142\n" in conf


def test_the_base_is_rebuilt_when_its_recipe_or_the_host_cas_change() -> None:
    hooks = sb.base_recipe("ssh-ed25519 AAAA test")
    digest = sb.recipe_digest(hooks, [])
    assert digest == sb.recipe_digest(list(hooks), [])
    assert digest != sb.recipe_digest(hooks, ["-----BEGIN CERTIFICATE-----"])
    assert digest != sb.recipe_digest(sb.base_recipe("ssh-ed25519 BBBB test"), [])


@pytest.mark.parametrize(
    "argv", [["status", "--cluster", "Bad_Name"], ["up", "--vm", "x:nosuch"], ["down"]]
)
def test_operator_errors_exit_2_with_one_sentence(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sb.os, "geteuid", lambda: 1000)
    assert sb.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sandbox: ") and "\n" not in err


# --- vm: real systemd-nspawn VMs -----------------------------------------------------------

CLUSTER = "pytest-sandbox"
NAMES = ["pt-sbx-1", "pt-sbx-2", "pt-sbx-3"]
STATE_DIR = Path(os.environ.get("SLIPWAY_SANDBOX_DIR", "/var/lib/slipway-sandbox"))


vm = pytest.mark.vm


def sandbox(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*SANDBOX, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"sandbox {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc


def status() -> dict[str, dict[str, object]]:
    rows = json.loads(sandbox("status", "--cluster", CLUSTER, "--json").stdout)["vms"]
    return {row["name"]: row for row in rows}


def traces() -> list[str]:
    """Everything a VM of this cluster could leave behind, as readable lines."""
    found = []
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount {line}" for line in mounts if any(f"/vms/{n}/" in line for n in NAMES)]
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    found += [  # a <defunct> nspawn waits for PID 1 to reap it: not ours to clear
        f"process {line}"
        for line in ps.splitlines()
        if any(f"--machine={n}" in line for n in NAMES) and " Z" not in line
    ]
    for name in NAMES:
        for hierarchy in ("systemd", "unified", "memory"):
            path = Path(f"/sys/fs/cgroup/{hierarchy}/slipway-sandbox/{name}")
            if path.exists():
                found.append(f"cgroup {path}")
        for path in (Path(f"/run/systemd/nspawn/propagate/{name}"), STATE_DIR / "vms" / name):
            if path.exists():
                found.append(f"dir {path}")
        if Path(f"/sys/class/net/vb-{name}").exists():
            found.append(f"veth vb-{name}")
    return found


@pytest.fixture
def cluster_args() -> Iterator[list[str]]:
    """`up` arguments for this test's cluster; the cluster is removed afterwards, always."""
    subprocess.run([*SANDBOX, "down", "--cluster", CLUSTER], capture_output=True, check=False)
    yield ["up", "--cluster", CLUSTER, "--inventory", "-", "--json"] + [
        f"--vm={name}:web" for name in NAMES
    ]
    subprocess.run([*SANDBOX, "down", "--cluster", CLUSTER], capture_output=True, check=False)


# One test, in steps: the steps depend on each other, and pytest-xdist may hand separate
# tests to separate workers (its loadgroup is a no-op with pytest 9).
@vm
@needs_vms
def test_up_status_crash_and_down_on_three_vms(cluster_args: list[str]) -> None:
    first = json.loads(sandbox(*cluster_args).stdout)
    assert first["booted"] == NAMES

    # All three running, as status and as each VM's systemd over SSH say.
    rows = status()
    assert sorted(rows) == NAMES
    assert {row["state"] for row in rows.values()} == {"running"}
    for name in NAMES:
        out = subprocess.run(
            [*SANDBOX, "ssh", name, "systemctl", "is-system-running"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.stdout.strip() == "running", (name, out.stdout, out.stderr)

    # `up` again: nothing booted, same addresses.
    again = json.loads(sandbox(*cluster_args).stdout)
    assert again["booted"] == []
    addresses = [(r["name"], r["address"]) for r in first["vms"]]
    assert [(r["name"], r["address"]) for r in again["vms"]] == addresses

    # kill -9 of one nspawn: status says down at once; `up` boots it again, same address.
    state = json.loads((STATE_DIR / "state.json").read_text())
    os.kill(state["vms"][NAMES[0]]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while status()[NAMES[0]]["state"] != "down" and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = status()
    assert rows[NAMES[0]]["state"] == "down"
    assert rows[NAMES[1]]["state"] == rows[NAMES[2]]["state"] == "running"
    revived = json.loads(sandbox(*cluster_args).stdout)
    assert revived["booted"] == [NAMES[0]]
    assert [(r["name"], r["address"]) for r in revived["vms"]] == addresses
    assert status()[NAMES[0]]["state"] == "running"

    # `down`: nothing of these VMs is left; with no other cluster, no network either.
    removed = json.loads(sandbox("down", "--cluster", CLUSTER, "--json").stdout)
    assert sorted(removed["removed"]) == NAMES
    assert traces() == []
    assert status() == {}
    if removed["vms_left"] == 0:
        assert not Path("/sys/class/net/slipbr0").exists()
        rules = subprocess.run(
            ["sh", "-c", "iptables -w -S; iptables -w -t nat -S"], capture_output=True, text=True
        ).stdout
        assert "slipway-sandbox " not in rules + " "
        acng = subprocess.run(["pgrep", "-f", "slipway-sandbox/acng"], capture_output=True)
        assert acng.stdout.strip() == b""


# A second, independent sandbox (own state dir, bridge and subnet): there this test's
# cluster is always the last one, so `down` must also take the shared network away,
# whatever other clusters the main sandbox runs meanwhile. Its base image is cached
# in its state dir like the main one (built once, ~40 s).
ISOLATED = {
    "SLIPWAY_SANDBOX_DIR": "/var/lib/slipway-sandbox-test",
    "SLIPWAY_SANDBOX_BRIDGE": "slipbr7",
    "SLIPWAY_SANDBOX_NETWORK": "10.231.7.0/24",
}


def isolated(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*SANDBOX, *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, **ISOLATED},
    )
    assert proc.returncode == 0, f"isolated sandbox {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc


@vm
@needs_vms
def test_down_of_the_last_cluster_removes_bridge_rules_and_apt_proxy() -> None:
    isolated("down", "--all")
    up = json.loads(isolated("up", "--cluster", "iso", "--vm=pt-iso-1:web", "--json").stdout)
    assert [row["address"] for row in up["vms"]] == ["10.231.7.10"]
    assert Path("/sys/class/net/slipbr7").exists()
    down = json.loads(isolated("down", "--cluster", "iso", "--json").stdout)
    assert down == {"removed": ["pt-iso-1"], "vms_left": 0}
    assert not Path("/sys/class/net/slipbr7").exists()
    rules = subprocess.run(
        ["sh", "-c", "iptables -w -S; iptables -w -t nat -S"], capture_output=True, text=True
    ).stdout
    assert "slipway-sandbox-slipbr7" not in rules
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    assert not [
        line
        for line in ps.splitlines()
        if ("sandbox-test/acng" in line or "--machine=pt-iso-1" in line) and " Z" not in line
    ]
    assert "pt-iso-1" not in Path("/proc/mounts").read_text()
    assert not any(
        Path(f"/sys/fs/cgroup/{h}/slipway-sandbox-slipbr7").exists()
        for h in ("systemd", "unified", "memory")
    )
    assert not Path("/run/systemd/nspawn/propagate/pt-iso-1").exists()
