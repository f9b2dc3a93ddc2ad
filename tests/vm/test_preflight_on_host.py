"""A port already taken on a host stops `site.yml` in preflight, naming the host,
the port and the program holding it, before anything on any host changes.

Real VM (systemd-nspawn, a cluster of its own): a bare Debian 12 host where a
Python web server holds 443, as another web server would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AnsibleRunner, needs_vms

REPO = Path(__file__).resolve().parents[2]
SANDBOX = [sys.executable, "-m", "tools.sandbox"]  # run with cwd=REPO
CLUSTER = "preflight"
NAME = "pf-aio"
GROUPS = "lb,web,worker,db,redis,monitoring"


def sandbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SANDBOX, *args], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    """The sandbox inventory's settings, with this cluster's one VM as every tier."""
    inv = tmp_path / "inventory"
    shutil.copytree(REPO / "inventories/sandbox/group_vars", inv / "group_vars")
    # The site preflight checks the monitoring inputs, Pebble's root among them; this test
    # starts no Pebble and stops before any host changes.
    (inv / "group_vars/all/zz_test.yml").write_text("prometheus_blackbox_ca_cert: stand-in\n")
    sandbox("down", "--cluster", CLUSTER)
    up = sandbox("up", "--cluster", CLUSTER, f"--vm={NAME}:{GROUPS}",
                 "--inventory", str(inv / "hosts.yml"), "--json")  # fmt: skip
    assert up.returncode == 0, up.stderr[-2000:]
    assert [row["name"] for row in json.loads(up.stdout)["vms"]] == [NAME]
    yield inv
    sandbox("down", "--cluster", CLUSTER)


def on_vm(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell command line on the VM (ssh passes one string to the remote shell)."""
    proc = sandbox("ssh", NAME, "--", script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.vm
@needs_vms
def test_a_port_taken_by_another_program_stops_the_run_before_any_change(
    inventory: Path, ansible: AnsibleRunner
) -> None:
    on_vm("systemd-run --unit=squatter python3 -m http.server 443")
    on_vm("for i in $(seq 50); do ss -ltnH | grep -q ':443 ' && exit 0; sleep 0.1; done; exit 1")

    proc = ansible("ansible-playbook", "-i", str(inventory), "site.yml", timeout=300)

    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0
    assert f"On {NAME}, port 443 (wanted by nginx for lb) is held by python3 (pid" in out, (
        proc.stdout[-3000:]
    )
    assert "PLAY [Base system for every host]" not in proc.stdout
    assert "changed=0" in out
    # and the host is as it was: no nginx, the squatter still serving
    assert on_vm("command -v nginx || echo absent").stdout.strip() == "absent"
    assert on_vm("systemctl is-active squatter").stdout.strip() == "active"
