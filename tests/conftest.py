"""Fixtures shared by the controller-side tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
# ansible-playbook's arguments for a play on this machine, run by the tests' interpreter.
LOCALHOST = (
    "-i",
    "localhost,",
    "-c",
    "local",
    "-e",
    f"ansible_python_interpreter={sys.executable}",
)

AnsibleRunner = Callable[..., subprocess.CompletedProcess[str]]


def vm_skip_reason() -> str | None:
    """Why this machine cannot boot sandbox VMs, or None if it can.

    Only the lack of root skips: a missing host package (systemd-container, pebble, ...)
    is installed by the sandbox itself (`make test` runs `python3 -m tools.sandbox host`
    first, and every `up` checks again), so it must fail a test rather than hide it."""
    if os.geteuid() != 0:
        return "boots systemd-nspawn VMs: run as root"
    return None


# Tests that boot sandbox VMs: the `vm` marker, skipped where VMs cannot run.
needs_vms = pytest.mark.skipif(vm_skip_reason() is not None, reason=str(vm_skip_reason()))


@pytest.fixture
def ansible() -> AnsibleRunner:
    """Run an Ansible command of the project's venv from the repository root, with the
    project's ansible.cfg: ``ansible("ansible-playbook", "-i", inv, "site.yml", env={...})``."""

    def run(
        tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            **(env or {}),  # may replace any of the above, PATH too
        }
        return subprocess.run(
            [str(BIN / tool), *args],
            cwd=REPO,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
