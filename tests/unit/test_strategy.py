"""The default strategy (plugins/strategy/slipway_linear.py, named in ansible.cfg) runs a
playbook over Mitogen when Mitogen can be imported, and as Ansible's plain linear strategy,
with a warning, when it cannot. Both ways run a real playbook on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Each task reports the process that ran its module: over Mitogen one interpreter on the
# host, named "(mitogen:...)", serves every task; Ansible's own strategy starts a fresh
# AnsiballZ interpreter per task.
PLAYBOOK = r"""
- name: Strategy probe
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Report the module's interpreter
      ansible.builtin.command:
        argv: [sh, -c, 'echo "pid=$PPID"; tr "\0" " " < /proc/$PPID/cmdline; echo']
      changed_when: false
      loop: [1, 2]
      register: probe

    - name: Write both down
      ansible.builtin.copy:
        content: "{{ probe.results | map(attribute='stdout') | list | to_json }}"
        dest: "{{ report }}"
        mode: "0644"
"""

WARNING = "Mitogen cannot be imported"


def run_playbook(tmp_path: Path, *, block_mitogen: bool) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_STRATEGY", None)
    if block_mitogen:
        # A package of the same name earlier on the path, that fails to import: what a
        # controller without Mitogen sees.
        fake = tmp_path / "blocked" / "ansible_mitogen"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
        env["PYTHONPATH"] = str(fake.parent)
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [
            str(bin_dir / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"report={tmp_path / 'report.json'}",
            str(playbook),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def interpreters(tmp_path: Path) -> list[str]:
    """What the probe task reported for each item: "pid=N <the module's command line>"."""
    return [" ".join(item.split()) for item in json.loads((tmp_path / "report.json").read_text())]


def test_default_strategy_runs_over_mitogen(tmp_path: Path) -> None:
    pytest.importorskip("ansible_mitogen")
    proc = run_playbook(tmp_path, block_mitogen=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert WARNING not in out
    first, second = interpreters(tmp_path)
    assert "(mitogen:" in first, first
    assert first.split()[0] == second.split()[0], "one interpreter serves both tasks"


def test_without_mitogen_the_same_playbook_runs_linear_with_a_warning(tmp_path: Path) -> None:
    proc = run_playbook(tmp_path, block_mitogen=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert WARNING in out and "blocked by the test" in out
    first, second = interpreters(tmp_path)
    assert "AnsiballZ_command" in first and "mitogen" not in first, first
    assert first.split()[0] != second.split()[0], "a fresh interpreter per task"
