"""Fixtures shared by the controller-side tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"

AnsibleRunner = Callable[..., subprocess.CompletedProcess[str]]


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
