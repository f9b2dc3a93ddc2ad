"""The converge bench times each task with its own callback (bench/callbacks/): a real
playbook, run with the environment the bench gives ansible-playbook, writes one line per task
with its role and seconds, and the bench's Run sums them per role and finds the slowest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.converge_bench import BIN, REPO, Bench, Run
from tests.conftest import LOCALHOST

PLAYBOOK = """
- name: Timed
  hosts: localhost
  gather_facts: false
  roles:
    - role: sleepy
  tasks:
    - name: Quick
      ansible.builtin.debug:
        msg: quick
"""

ROLE_TASKS = """
- name: Sleep a little
  ansible.builtin.command: sleep 0.6
  changed_when: false
"""


def test_each_task_is_timed_with_its_role(tmp_path: Path) -> None:
    (tmp_path / "roles" / "sleepy" / "tasks").mkdir(parents=True)
    (tmp_path / "roles" / "sleepy" / "tasks" / "main.yml").write_text(ROLE_TASKS)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    times = tmp_path / "times.jsonl"
    env = dict(
        Bench(keep=False).env,
        SLIPWAY_TASK_TIMES=str(times),
        ANSIBLE_ROLES_PATH=str(tmp_path / "roles"),
        ANSIBLE_STRATEGY="linear",  # the callback, not the strategy, is under test
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), *LOCALHOST, str(tmp_path / "play.yml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in times.read_text().splitlines()]
    assert [(r["role"], r["task"], r["action"]) for r in rows] == [
        ("sleepy", "Sleep a little", "ansible.builtin.command"),
        ("", "Quick", "ansible.builtin.debug"),
    ]
    assert rows[0]["seconds"] >= 0.6 > rows[1]["seconds"]

    run = Run(1.0, 0, [], 0.5, 2, rows)
    assert run.slowest(1) == [f"{rows[0]['seconds']:.1f} s sleepy : Sleep a little"]
    assert list(run.by_role()) == ["sleepy", "(play)"]
