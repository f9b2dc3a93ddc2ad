"""slipway_template: the module on real files under tmp_path, and the action beside
ansible.builtin.template in one playbook on localhost (same bytes, same changed, check and
diff mode, a failing validate)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from plugins.modules import slipway_template
from tests.conftest import LOCALHOST, AnsibleRunner
from tests.unit.module_harness import ExitJson, FailJson, patch_exits


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_exits(monkeypatch)


def _args(dest: Path, content: str = "a = 1\n", **kw: Any) -> dict[str, Any]:
    encoded = base64.b64encode(content.encode()).decode()
    return {
        "src": "app.conf.j2",
        "dest": str(dest),
        "content_base64": encoded,
        "mode": "0640",
        **kw,
    }


def _run(args: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
    module_args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(module_args), pytest.raises(ExitJson) as exc:
        slipway_template.main()
    result: dict[str, Any] = exc.value.args[0]
    return result


def _fail(args: dict[str, Any]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(FailJson) as exc:
        slipway_template.main()
    result: dict[str, Any] = exc.value.args[0]
    return result


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_a_new_file_then_reports_no_change(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    first = _run(_args(dest))
    assert first["changed"] and dest.read_text() == "a = 1\n" and _mode(dest) == 0o640
    assert first["checksum"] == hashlib.sha1(b"a = 1\n").hexdigest()
    assert not _run(_args(dest))["changed"]


def test_an_unchanged_file_gets_its_mode_back(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    _run(_args(dest))
    dest.chmod(0o666)
    assert _run(_args(dest))["changed"]
    assert _mode(dest) == 0o640 and dest.read_text() == "a = 1\n"


def test_new_content_replaces_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    _run(_args(dest))
    result = _run(_args(dest, "a = 2\n"), diff=True)
    assert result["changed"] and dest.read_text() == "a = 2\n"
    assert result["diff"]["before"] == "a = 1\n" and result["diff"]["after"] == "a = 2\n"


def test_check_mode_reports_and_writes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    assert _run(_args(dest), check=True)["changed"] and not dest.exists()
    _run(_args(dest))
    result = _run(_args(dest, "a = 2\n"), check=True, diff=True)
    assert result["changed"] and result["diff"]["after"] == "a = 2\n"
    assert dest.read_text() == "a = 1\n"
    dest.chmod(0o600)
    assert _run(_args(dest), check=True)["changed"] and _mode(dest) == 0o600


def test_a_failing_validate_leaves_the_file_alone(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    _run(_args(dest))
    failed = _fail(_args(dest, "broken\n", validate="grep -q '=' %s"))
    assert "failed to validate" in failed["msg"] and dest.read_text() == "a = 1\n"
    assert _run(_args(dest, "b = 2\n", validate="grep -q '=' %s"))["changed"]
    assert dest.read_text() == "b = 2\n"
    assert "must contain %s" in _fail(_args(dest, "c = 3\n", validate="true"))["msg"]


def test_backup_keeps_the_old_content(tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    _run(_args(dest))
    result = _run(_args(dest, "a = 2\n", backup=True))
    assert Path(result["backup_file"]).read_text() == "a = 1\n"


def test_the_module_refuses_to_run_without_its_action(tmp_path: Path) -> None:
    args = _args(tmp_path / "app.conf")
    del args["content_base64"]
    assert "action plugin" in _fail(args)["msg"]


# --- The action, beside ansible.builtin.template ----------------------------------------

TEMPLATE = """# {{ ansible_managed }}
# from {{ template_path | basename }} for {{ template_destpath | dirname }}
{% for name in names %}
{{ name }} = {{ loop.index }}
{% endfor %}
{% if extra %}
extra = yes
{% endif %}
"""
# A template whose own text uses Jinja's delimiters (like Prometheus' alert rules).
BRACKETS = "value: {{ $labels.x }} [[ answer ]]\n"

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    names: [a, b]
    extra: true
    answer: 42
  tasks:
    - name: builtin
      ansible.builtin.template: {src: t.j2, dest: "{{ out }}/builtin.conf", mode: "0640"}
      register: builtin
    - name: ours
      slipway_template: {src: t.j2, dest: "{{ out }}/ours.conf", mode: "0640"}
      register: ours
    - name: builtin brackets
      ansible.builtin.template:
        src: b.j2
        dest: "{{ out }}/builtin.rules"
        mode: "0644"
        variable_start_string: "[["
        variable_end_string: "]]"
    - name: ours brackets
      slipway_template:
        src: b.j2
        dest: "{{ out }}/ours.rules"
        mode: "0644"
        variable_start_string: "[["
        variable_end_string: "]]"
    - name: ours with a failing validate
      slipway_template:
        src: t.j2
        dest: "{{ out }}/validated.conf"
        mode: "0644"
        validate: "false %s"
      register: refused
      ignore_errors: true
    - name: report
      ansible.builtin.copy:
        dest: "{{ out }}/report.json"
        content: "{{ {'builtin': builtin.changed, 'ours': ours.changed, 'refused': refused.failed,
                      'ours_checksum': ours.checksum | default(none),
                      'builtin_checksum': builtin.checksum | default(none)} | to_json }}"
        mode: "0644"
      check_mode: false
"""


@pytest.fixture
def play(tmp_path: Path, ansible: AnsibleRunner) -> Any:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.j2").write_text(TEMPLATE)
    (tmp_path / "templates" / "b.j2").write_text(BRACKETS)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    out = tmp_path / "out"
    out.mkdir()

    def run(*extra: str) -> tuple[dict[str, Any], str]:
        playbook = str(tmp_path / "play.yml")
        proc = ansible("ansible-playbook", *LOCALHOST, "-e", f"out={out}", *extra, playbook)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return json.loads((out / "report.json").read_text()), proc.stdout

    return out, run


def test_the_action_writes_what_the_builtin_writes(play: Any) -> None:
    out, run = play
    first, _ = run()
    assert first["builtin"] and first["ours"] and first["refused"]
    assert (out / "ours.conf").read_bytes() == (out / "builtin.conf").read_bytes()
    assert "a = 1\nb = 2\nextra = yes\n" in (out / "ours.conf").read_text()
    assert (out / "ours.rules").read_text() == "value: {{ $labels.x }} 42\n"
    assert (out / "ours.rules").read_bytes() == (out / "builtin.rules").read_bytes()
    assert first["ours_checksum"] == first["builtin_checksum"]
    assert oct(_mode(out / "ours.conf")) == oct(_mode(out / "builtin.conf")) == oct(0o640)
    assert not (out / "validated.conf").exists()

    second, _ = run()
    assert not second["builtin"] and not second["ours"]


def test_the_action_in_check_and_diff_mode(play: Any) -> None:
    out, run = play
    run()
    before = (out / "ours.conf").read_text()
    report, stdout = run("-e", '{"extra": false}', "--check", "--diff")
    assert report["builtin"] and report["ours"]
    assert (out / "ours.conf").read_text() == before, "check mode wrote the file"
    # The diff shows the removed line, once for each action.
    assert stdout.count("-extra = yes") == 2, stdout[-3000:]
