"""The base role's own preflight: SSH settings that would lock this very run out are
refused before sshd is touched. Runs the role's preflight tasks on this machine
(Debian 12, like the hosts), which changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import AnsibleRunner

PLAY = [
    {
        "name": "Base preflight only",
        "hosts": "all",
        "gather_facts": True,
        "tasks": [
            {
                "name": "Run the base role's preflight",
                "ansible.builtin.include_role": {"name": "base", "tasks_from": "preflight"},
            }
        ],
    }
]


def preflight(
    ansible: AnsibleRunner, tmp_path: Path, **host_vars: object
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(yaml.safe_dump(PLAY, sort_keys=False))
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {"all": {"hosts": {"here": {**host, **host_vars}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return ansible(
        "ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")
    )


def test_defaults_pass(ansible: AnsibleRunner, tmp_path: Path) -> None:
    proc = preflight(ansible, tmp_path, ansible_user="root")
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize(
    ("host_vars", "expected"),
    [
        pytest.param(
            {"ansible_user": "root", "base_ssh_permit_root_login": "no"},
            "here: Ansible connects as root, which the SSH settings would refuse",
            id="root-login-off-while-root",
        ),
        pytest.param(
            {"ansible_user": "admin", "ansible_password": "pw"},
            "here: Ansible connects as admin with a password, which the SSH settings would refuse",
            id="passwords-off-while-password",
        ),
    ],
)
def test_ssh_lockout_is_refused(
    ansible: AnsibleRunner, tmp_path: Path, host_vars: dict[str, str], expected: str
) -> None:
    proc = preflight(ansible, tmp_path, **host_vars)
    assert proc.returncode != 0
    assert expected in " ".join(proc.stdout.split()), proc.stdout[-3000:]
