"""Fixtures shared by the controller-side tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"

AnsibleRunner = Callable[..., subprocess.CompletedProcess[str]]


def vm_skip_reason() -> str | None:
    """Why this machine cannot boot sandbox VMs (systemd-nspawn), or None if it can."""
    if os.geteuid() != 0:
        return "boots systemd-nspawn VMs: run as root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing: apt-get install systemd-container"
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
        full_env = dict(
            os.environ,
            PATH=f"{BIN}:{os.environ['PATH']}",
            ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            **(env or {}),
        )
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
