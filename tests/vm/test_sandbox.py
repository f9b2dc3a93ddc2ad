"""tools/sandbox/ on real systemd-nspawn VMs (marked `vm`, in a cluster of its own): up,
honest status, idempotent up, a crashed VM seen and restarted, and a `down` that leaves
nothing behind. Its logic without root or VMs is tested in tests/unit/test_sandbox_logic.py."""

from __future__ import annotations

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
SANDBOX = [sys.executable, "-m", "tools.sandbox"]  # run with cwd=REPO


# --- vm: real systemd-nspawn VMs -----------------------------------------------------------

CLUSTER = "pytest-sandbox"
NAMES = ["pt-sbx-1", "pt-sbx-2", "pt-sbx-3"]
STATE_DIR = Path(os.environ.get("SLIPWAY_SANDBOX_DIR", "/var/lib/slipway-sandbox"))


vm = pytest.mark.vm


def sandbox(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*SANDBOX, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
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
    subprocess.run([*SANDBOX, "down", "--cluster", CLUSTER], cwd=REPO, capture_output=True)
    yield ["up", "--cluster", CLUSTER, "--inventory", "-", "--json"] + [
        f"--vm={name}:web" for name in NAMES
    ]
    subprocess.run([*SANDBOX, "down", "--cluster", CLUSTER], cwd=REPO, capture_output=True)


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
            cwd=REPO,
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
        cwd=REPO,
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
