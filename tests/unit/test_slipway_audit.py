"""The slipway_audit callback (plugins/callback/slipway_audit.py) in a real ansible-playbook run.

A tiny playbook runs against two local hosts (connection=local). Stub modules named
app_release and app_restart (in the playbook's own library/) return what ours return, so
the callback reads from/to releases the way it does in a real deploy; debug / set_fact
tasks carry the task var slipway_audit_event. Each run takes a few seconds."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import BIN, REPO

PLAYBOOK = """
- name: Roll the release over the web hosts
  hosts: web
  gather_facts: false
  serial: 1
  tasks:
    - name: Drain the host
      ansible.builtin.debug:
        msg: draining {{ inventory_hostname }}
      vars:
        slipway_audit_event: drained
    - name: Switch the release
      app_release:
        state: active
        release: "{{ release }}"
      when: restart_only | default('') != inventory_hostname
      vars:
        slipway_audit_event: switched
    - name: Restart the app's units
      app_restart:
        unit: "{{ item }}"
        release_id: "{{ release }}"
      loop: [web, worker]
    - name: Switch back
      app_release:
        state: active
        release: r1
        previous: "{{ release }}"
      when: switch_back | default('') == inventory_hostname
      vars:
        slipway_audit_event: switched-back
    - name: Break one host
      ansible.builtin.fail:
        msg: "health gate refused {{ 'x' * 600 }}"
      when: break_host | default('') == inventory_hostname
    - name: Put the host back
      ansible.builtin.set_fact:
        restored: true
      vars:
        slipway_audit_event: restored
"""

APP_RELEASE = """
from ansible.module_utils.basic import AnsibleModule
spec = {"state": {"type": "str"}, "release": {"type": "str"}, "previous": {"default": "r1"}}
m = AnsibleModule(spec, supports_check_mode=True)
m.exit_json(changed=True, previous=m.params["previous"], release=m.params["release"])
"""

APP_RESTART = """
from ansible.module_utils.basic import AnsibleModule
spec = {"unit": {"type": "str"}, "release_id": {"type": "str"}}
m = AnsibleModule(spec, supports_check_mode=True)
m.exit_json(changed=True, release_id=m.params["release_id"])
"""


def run_playbook(tmp: Path, name: str, *extra: str, log: Path | None = None):
    (tmp / name).write_text(PLAYBOOK)
    (tmp / "library").mkdir(exist_ok=True)
    (tmp / "library" / "app_release.py").write_text(APP_RELEASE)
    (tmp / "library" / "app_restart.py").write_text(APP_RESTART)
    (tmp / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = false\n")
    (tmp / "hosts").write_text(
        "[web]\nweb1\nweb2\n\n[web:vars]\nansible_connection=local\n"
        f"ansible_python_interpreter={sys.executable}\n"
    )
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),
        ANSIBLE_CALLBACK_PLUGINS=str(REPO / "plugins" / "callback"),
        ANSIBLE_CALLBACKS_ENABLED="slipway_audit",
        ANSIBLE_NOCOLOR="1",
        SLIPWAY_AUDIT_LOG=str(log or tmp / "state" / "slipway" / "audit.log"),
        SUDO_USER="alice",
    )
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "hosts", name, *extra],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def audit_lines(tmp: Path) -> list[dict]:
    log = tmp / "state" / "slipway" / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_deploy_writes_one_line(tmp_path: Path) -> None:
    proc = run_playbook(tmp_path, "deploy.yml", "-e", "release=r2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = tmp_path / "state" / "slipway" / "audit.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o750
    [line] = audit_lines(tmp_path)
    assert line["action"] == "deploy"
    assert line["playbook"] == str(tmp_path / "deploy.yml")
    assert line["timestamp"].endswith("+00:00")
    assert line["user"] == "alice"
    assert line["controller"]
    assert line["extra_vars"] == {"release": "r2"}
    assert (line["from"], line["to"]) == ("r1", "r2")
    assert line["releases"] == {h: {"from": "r1", "to": "r2"} for h in ("web1", "web2")}
    assert line["hosts"] == ["web1", "web2"]
    assert line["result"] == "ok"
    assert line["check_mode"] is False
    assert line["failed"] == {}
    assert isinstance(line["duration_s"], float)
    # serial: 1, so web1's three events come before web2's, in task order
    assert [(e["host"], e["event"]) for e in line["events"]] == [
        ("web1", "drained"),
        ("web1", "switched"),
        ("web1", "restored"),
        ("web2", "drained"),
        ("web2", "switched"),
        ("web2", "restored"),
    ]
    assert line["events"][1]["task"] == "Switch the release"
    times = [e["time"] for e in line["events"]]
    assert times == sorted(times) and all(isinstance(t, float) for t in times)
    assert f"audit: deploy r1 -> r2 on 2 host(s): ok in {line['duration_s']} s" in proc.stdout
    assert f"(log: {log})" in proc.stdout


def test_failed_rollback_names_the_host_and_its_first_failure(tmp_path: Path) -> None:
    # In check mode: web1 only restarts (its release comes from app_restart's loop results);
    # web2 switches to r0, is switched back to r1 and then fails.
    proc = run_playbook(
        tmp_path,
        "rollback.yml",
        *("-e", "release=r0 rollback_to=r0"),
        *("-e", "restart_only=web1 switch_back=web2 break_host=web2"),
        "--check",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = audit_lines(tmp_path)
    assert line["action"] == "rollback"
    assert line["extra_vars"] == {"release": "r0", "rollback_to": "r0"}
    assert line["releases"] == {
        "web1": {"from": "r0", "to": "r0"},
        "web2": {"from": "r1", "to": "r1"},  # from: before its first switch
    }
    assert (line["from"], line["to"]) == ("r0,r1", "r0,r1")
    assert line["result"] == "failed"
    assert line["check_mode"] is True
    assert list(line["failed"]) == ["web2"]
    failure = line["failed"]["web2"]
    assert failure["task"] == "Break one host"
    assert failure["msg"].startswith("health gate refused xxx")
    assert len(failure["msg"]) == 500
    assert [(e["host"], e["event"]) for e in line["events"]] == [
        ("web1", "drained"),
        ("web1", "restored"),
        ("web2", "drained"),
        ("web2", "switched"),
        ("web2", "switched-back"),
    ]
    assert "audit: rollback r0,r1 -> r0,r1 on 2 host(s): failed (check mode) in" in proc.stdout


def test_other_playbooks_are_not_audited(tmp_path: Path) -> None:
    proc = run_playbook(tmp_path, "site.yml", "-e", "release=r2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "state").exists()
    assert "audit:" not in proc.stdout


def test_a_broken_log_path_warns_and_never_breaks_the_run(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")  # its "subdirectory" cannot be made, not even by root
    log = not_a_dir / "sub" / "a.log"
    proc = run_playbook(tmp_path, "deploy.yml", "-e", "release=r2", log=log)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "slipway_audit: v2_playbook_on_stats failed" in proc.stdout + proc.stderr
