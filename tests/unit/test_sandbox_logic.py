"""tools/sandbox.py logic that needs neither root nor VMs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sandbox", REPO / "tools" / "sandbox.py")
assert _spec and _spec.loader
sandbox = importlib.util.module_from_spec(_spec)
sys.modules["sandbox"] = sandbox
_spec.loader.exec_module(sandbox)


def test_allocates_the_lowest_free_address() -> None:
    assert sandbox.allocate_address(set()) == "10.231.0.10"
    assert sandbox.allocate_address({"10.231.0.10", "10.231.0.12"}) == "10.231.0.11"


def test_refuses_when_the_network_is_full() -> None:
    taken = {str(h) for h in sandbox.NETWORK.hosts()}
    with pytest.raises(sandbox.SandboxError, match="no free address"):
        sandbox.allocate_address(taken)


def test_parses_vm_specs() -> None:
    assert sandbox.parse_vm_spec("web-1:web,worker") == ("web-1", ["web", "worker"])
    assert sandbox.parse_vm_spec("bare") == ("bare", [])


@pytest.mark.parametrize(
    ("spec", "message"),
    [("x:nosuch", "unknown group"), ("bad_name:web", "letters, digits"), (":web", "letters")],
)
def test_rejects_bad_vm_specs(spec: str, message: str) -> None:
    with pytest.raises(sandbox.SandboxError, match=message):
        sandbox.parse_vm_spec(spec)


def test_inventory_places_hosts_in_their_groups() -> None:
    vms = [
        sandbox.Vm("a", "c", "10.231.0.10", ["lb", "web"]),
        sandbox.Vm("b", "c", "10.231.0.11", ["db"]),
    ]
    text = sandbox.render_inventory(vms, Path("/k/id"))
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(text)["all"]
    assert data["hosts"]["a"]["ansible_host"] == "10.231.0.10"
    assert set(data["children"]["lb"]["hosts"]) == {"a"}
    assert set(data["children"]["db"]["hosts"]) == {"b"}
    assert data["children"]["gpu"]["hosts"] == {}
    assert data["vars"]["ansible_ssh_private_key_file"] == "/k/id"


def test_a_zombie_or_missing_process_counts_as_gone() -> None:
    assert sandbox.process_alive(os.getpid()) is True
    assert sandbox.process_alive(1 << 30) is False
    child = subprocess.Popen(["true"])  # exits at once; not reaped until wait()
    deadline = time.monotonic() + 5
    stat = Path(f"/proc/{child.pid}/stat")
    while " Z " not in stat.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert " Z " in stat.read_text()
    assert sandbox.process_alive(child.pid) is False
    child.wait()


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox.SandboxError, match="needs root"):
        sandbox.preflight()
