"""The sandbox on real systemd-nspawn VMs: up, honest status, idempotent up,
and a `down` that leaves nothing behind. Uses a cluster of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SANDBOX = ["python3", str(REPO / "tools" / "sandbox.py")]
CLUSTER = "pytest-sandbox"
NAMES = ["pt-sbx-1", "pt-sbx-2", "pt-sbx-3"]
STATE_DIR = Path(os.environ.get("SLIPWAY_SANDBOX_DIR", "/var/lib/slipway-sandbox"))

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="boots systemd-nspawn VMs: run as root"),
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="needs systemd-container"),
]


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
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {line}" for line in mounts.splitlines() if any(n in line for n in NAMES)]
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    found += [
        f"process {line}"
        for line in ps.splitlines()
        if any(f"--machine={n}" in line for n in NAMES) and " Z" not in line
    ]
    for hierarchy in ("systemd", "unified", "memory"):
        for name in NAMES:
            path = Path(f"/sys/fs/cgroup/{hierarchy}/slipway-sandbox/{name}")
            if path.exists():
                found.append(f"cgroup {path}")
    for name in NAMES:
        for path in (Path(f"/run/systemd/nspawn/propagate/{name}"), STATE_DIR / "vms" / name):
            if path.exists():
                found.append(f"dir {path}")
    return found


@pytest.fixture(scope="module")
def cluster() -> object:
    args = ["up", "--cluster", CLUSTER, "--inventory", "-", "--json"]
    args += [f"--vm={name}:web" for name in NAMES]
    first = json.loads(sandbox(*args).stdout)["vms"]
    yield first, args
    subprocess.run([*SANDBOX, "down", "--cluster", CLUSTER], capture_output=True, check=False)


def test_three_vms_boot_and_answer_over_ssh(cluster: tuple[list[dict], list[str]]) -> None:
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


def test_up_again_keeps_the_same_vms(cluster: tuple[list[dict], list[str]]) -> None:
    first, args = cluster
    again = json.loads(sandbox(*args).stdout)["vms"]
    assert [(r["name"], r["address"]) for r in again] == [(r["name"], r["address"]) for r in first]


def test_a_crashed_vm_shows_down_and_up_restarts_it(cluster: tuple[list[dict], list[str]]) -> None:
    _, args = cluster
    state = json.loads((STATE_DIR / "state.json").read_text())
    os.kill(state["vms"][NAMES[0]]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while status()[NAMES[0]]["state"] != "down" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status()[NAMES[0]]["state"] == "down"
    assert status()[NAMES[1]]["state"] == "running"
    sandbox(*args)
    assert status()[NAMES[0]]["state"] == "running"


def test_down_leaves_nothing_behind(cluster: tuple[list[dict], list[str]]) -> None:
    sandbox("down", "--cluster", CLUSTER)
    assert traces() == []
    assert status() == {}
    others = json.loads((STATE_DIR / "state.json").read_text())["vms"]
    if not others:  # the last cluster: the shared network must be gone too
        assert not Path("/sys/class/net/slipbr0").exists()
        rules = subprocess.run(
            ["sh", "-c", "iptables -S; iptables -t nat -S"], capture_output=True, text=True
        ).stdout
        assert "slipway-sandbox" not in rules
        acng = subprocess.run(["pgrep", "-f", "acng/conf"], capture_output=True, text=True)
        assert acng.stdout.strip() == ""
