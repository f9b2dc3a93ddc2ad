"""The default strategy (plugins/strategy/slipway_linear.py, named in ansible.cfg) runs a
playbook over Mitogen when Mitogen can be imported, and as Ansible's plain linear strategy,
with a warning, when it cannot. Both ways run a real playbook on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LOCALHOST, REPO

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
            *LOCALHOST,
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


# Conditions of every kind the roles use, each task writing what it saw.
SKIPS = r"""
- name: Skip probe
  hosts: localhost
  gather_facts: false
  vars:
    flag: false
  tasks:
    - name: False condition, registered
      ansible.builtin.command: echo never
      register: skipped_one
      when: flag

    - name: True condition
      ansible.builtin.command: echo ran
      register: ran_one
      changed_when: false
      when: not flag

    - name: False condition inherited from a block, run once, notifying
      when: flag
      block:
        - name: Inside the block
          ansible.builtin.command: echo never
          run_once: true
          notify: Never notified

    - name: A loop with a condition per item
      ansible.builtin.command: echo {{ item }}
      loop: [1, 2]
      when: item == 2
      register: looped
      changed_when: false

    - name: A templated condition (deprecated; its warning goes with the result)
      ansible.builtin.command: echo never
      when: "{{ flag }}"
      register: templated

    - name: Check mode of the condition's own variables
      ansible.builtin.command: echo never
      when: ansible_check_mode and not ansible_check_mode
      register: magic

    - name: Write down what was registered
      ansible.builtin.copy:
        content: "{{ {'skipped': skipped_one, 'ran': ran_one.stdout,
                      'looped': looped.results | map(attribute='skipped', default=false) | list,
                      'magic': magic, 'templated': templated} | to_json }}"
        dest: "{{ report }}"
        mode: "0644"

    - name: A condition that cannot be evaluated fails as it does in Ansible
      ansible.builtin.command: echo never
      when: no_such_variable

  handlers:
    - name: Never notified
      ansible.builtin.command: echo handler
"""


def run_skips(tmp_path: Path, strategy: str, *extra: str) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "skips.yml"
    playbook.write_text(SKIPS)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["ANSIBLE_STRATEGY"] = strategy
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "ansible-playbook"), *LOCALHOST,
         "-e", f"report={tmp_path / f'{strategy}.json'}", *extra, str(playbook)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_false_conditions_skip_without_a_worker_and_look_the_same(tmp_path: Path) -> None:
    ours = run_skips(tmp_path, "slipway_linear", "-vvvv")
    plain = run_skips(tmp_path, "linear")
    # The last task's undefined variable fails both runs, the same way.
    for proc in (ours, plain):
        assert proc.returncode == 2, proc.stdout[-3000:]
        assert "'no_such_variable' is undefined" in proc.stdout
    recap = [p.stdout[p.stdout.rindex("PLAY RECAP") :].split("\n", 2)[1] for p in (ours, plain)]
    assert recap[0] == recap[1], recap
    assert "ok=3" in recap[0] and "skipped=4" in recap[0] and "failed=1" in recap[0]
    seen = [json.loads((tmp_path / f"{s}.json").read_text()) for s in ("slipway_linear", "linear")]
    assert seen[0] == seen[1]
    assert seen[0]["skipped"] == {
        "changed": False,
        "skipped": True,
        "skip_reason": "Conditional result was False",
        "false_condition": "flag",
    }
    assert seen[0]["ran"] == "ran" and seen[0]["looped"] == [True, False]
    assert "Conditionals should not be surrounded" in str(seen[0]["templated"]["deprecations"])
    # Four skipped without a worker; the loop, the true and the failing condition went to one.
    assert ours.stdout.count("skipped without a worker") == 4, ours.stdout[-3000:]
    assert "No such variable" not in ours.stdout
    assert "no_such_variable" in ours.stdout.split("condition left to the worker")[1]


# Controller-only actions of every kind the roles use, on two hosts, each task's result
# written down: a shared task object or shared variables would show as one host's values
# on the other.
CONTROLLER = r"""
- name: Controller probe
  hosts: all
  gather_facts: false
  tasks:
    - name: Validate arguments
      ansible.builtin.validate_argument_spec:
        argument_spec:
          port: {type: int, required: true}
        provided_arguments:
          port: "{{ 8000 + (inventory_hostname == 'two') | int }}"
      register: validated

    - name: Set a fact per host
      ansible.builtin.set_fact:
        mine: "{{ inventory_hostname }}-fact"

    - name: Check it, with a message per host
      ansible.builtin.assert:
        that: mine == inventory_hostname ~ '-fact'
        success_msg: "{{ inventory_hostname }} has {{ mine }}"
        quiet: false
      register: checked

    - name: Show it
      ansible.builtin.debug:
        msg: "{{ mine }}"
      register: shown

    - name: Fail on one host only, and go on
      ansible.builtin.fail:
        msg: "{{ inventory_hostname }} fails"
      when: inventory_hostname == 'two'
      ignore_errors: true
      register: failed_one

    - name: An assertion that fails, with the operator's sentence
      ansible.builtin.assert:
        that: mine == 'nobody'
        fail_msg: "{{ inventory_hostname }}: mine is {{ mine }}"
      ignore_errors: true
      register: refused

    - name: Write down what was registered
      ansible.builtin.copy:
        content: "{{ {'validated': validated.failed, 'checked': checked, 'shown': shown.msg,
                      'failed_one': failed_one, 'refused': refused} | to_json }}"
        dest: "{{ report }}-{{ inventory_hostname }}.json"
        mode: "0644"
"""


def recap(stdout: str) -> list[str]:
    """The PLAY RECAP's lines of both hosts."""
    return stdout[stdout.rindex("PLAY RECAP") :].split("\n")[1:3]


def test_controller_actions_run_without_a_worker_and_look_the_same(tmp_path: Path) -> None:
    playbook = tmp_path / "controller.yml"
    playbook.write_text(CONTROLLER)
    procs = {}
    for strategy, extra in (("slipway_linear", ["-vvvv"]), ("linear", [])):
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        env["ANSIBLE_STRATEGY"] = strategy
        procs[strategy] = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "one,two,",
             "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
             "-e", f"report={tmp_path / strategy}", *extra, str(playbook)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    for proc in procs.values():
        assert proc.returncode == 0, proc.stdout[-3000:]
    recaps = {s: recap(p.stdout) for s, p in procs.items()}
    assert recaps["slipway_linear"] == recaps["linear"], recaps
    seen = {
        (s, h): json.loads((tmp_path / f"{s}-{h}.json").read_text())
        for s in ("slipway_linear", "linear")
        for h in ("one", "two")
    }
    for host in ("one", "two"):
        ours, plain = seen["slipway_linear", host], seen["linear", host]
        assert ours == plain, (ours, plain)
        assert ours["checked"]["msg"] == f"{host} has {host}-fact"
        assert ours["shown"] == f"{host}-fact"
        assert ours["refused"]["failed"]
        assert ours["refused"]["msg"] == f"{host}: mine is {host}-fact"
        assert ours["validated"] is False
    assert seen["slipway_linear", "two"]["failed_one"]["msg"] == "two fails"
    assert seen["slipway_linear", "one"]["failed_one"]["skipped"]
    # Five controller actions on each host, and one on "two" (fail) ran here; "one" skipped it.
    out = procs["slipway_linear"].stdout
    assert out.count("without a worker") - out.count("skipped without a worker") == 11, out[-3000:]


# Renders the same sources twice, with two templars, under every compile setting that changes
# Jinja's code (a template header's delimiters, escape_backslashes), and counts the times
# Jinja compiled each; "cached" loads the strategy module first.
COMPILE_PROBE = r"""
import collections, importlib.util, json, sys
import jinja2

calls = collections.Counter()
jinja_compile = jinja2.Environment.compile

def counting(self, source, *args, **kwargs):
    calls[source if isinstance(source, str) else "<expression tree>"] += 1
    return jinja_compile(self, source, *args, **kwargs)

jinja2.Environment.compile = counting
if sys.argv[1] == "cached":
    spec = importlib.util.spec_from_file_location("slipway_linear", sys.argv[2])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
from ansible.template import Templar, trust_as_template

seen = []
for x in (2, 3):
    t = Templar(variables={"x": x})
    seen.append(t.template(trust_as_template("{{ x * 2 }}")))
    seen.append(t.template(trust_as_template(
        "#jinja2:variable_start_string:'[%', variable_end_string:'%]'\n[% x %]{{ x }}")))
    seen.append(t.template(trust_as_template("[% x %]{{ x }}")))
    seen.append(t.evaluate_expression(trust_as_template("x + 1")))
    seen.append(t.template(trust_as_template("{{ '\\n' | length }}"), escape_backslashes=False))
    seen.append(t.template(trust_as_template("{{ '\\n' | length }}")))
print(json.dumps({"seen": seen, "calls": calls}))
"""


def test_templates_compile_once_per_source_and_render_the_same(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(COMPILE_PROBE)
    runs = {}
    for mode in ("plain", "cached"):
        proc = subprocess.run(
            [sys.executable, str(probe), mode, str(REPO / "plugins/strategy/slipway_linear.py")],
            # A fresh disk cache: the compilations counted are this run's own.
            env=dict(os.environ, SLIPWAY_JINJA_CACHE=str(tmp_path / mode)),
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = json.loads(proc.stdout.splitlines()[-1])
    plain, cached = runs["plain"], runs["cached"]
    assert cached["seen"] == plain["seen"] == [
        4, "2{{ x }}", "[% x %]2", 3, 1, 2,
        6, "3{{ x }}", "[% x %]3", 4, 1, 2,
    ]  # fmt: skip
    # Twice each without the cache; once per source and compile setting with it.
    assert plain["calls"]["{{ x * 2 }}"] == 2 and cached["calls"]["{{ x * 2 }}"] == 1
    assert plain["calls"]["<expression tree>"] == 2 and cached["calls"]["<expression tree>"] == 1
    # The header's delimiters and the plain ones are two compilations of one body.
    assert plain["calls"]["[% x %]{{ x }}"] == 4 and cached["calls"]["[% x %]{{ x }}"] == 2
    assert plain["calls"]["{{ '\\n' | length }}"] == 4
    assert cached["calls"]["{{ '\\n' | length }}"] == 2


# Run in a fresh interpreter: loading the strategy patches Mitogen and Jinja process-wide.
SCAN_CHECK = r"""
import glob, importlib.util, json, os, sys
import ansible, ansible_mitogen.module_finder as finder

mitogens_own = finder._scan_importlib_find_spec
spec = importlib.util.spec_from_file_location("slipway_linear", sys.argv[1])
strategy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(strategy)
assert finder._scan_importlib_find_spec is strategy._scan_cached, "not installed"

builtin = os.path.dirname(ansible.__file__)
search = (os.path.abspath("plugins/module_utils"), os.path.join(builtin, "module_utils"))
modules = sorted(glob.glob(builtin + "/modules/*.py") + glob.glob("plugins/modules/*.py"))
compiled = []
real_compile = compile
strategy.compile = lambda *a: compiled.append(a[1]) or real_compile(*a)
differ = []
for path in modules:
    name = "ansible_module_" + os.path.basename(path)[:-3]
    if strategy._scan_cached(name, path, search) != mitogens_own(name, path, search):
        differ.append(path)
first = len(compiled)
for path in modules:  # the same scans again: nothing read twice
    strategy._scan_cached("ansible_module_" + os.path.basename(path)[:-3], path, search)
print(json.dumps({"modules": len(modules), "differ": differ, "compiled": first,
                  "recompiled": len(compiled) - first}))
"""


def test_module_scan_cache_finds_what_mitogen_finds_and_compiles_each_file_once() -> None:
    pytest.importorskip("ansible_mitogen")
    proc = subprocess.run(
        [sys.executable, "-c", SCAN_CHECK, str(REPO / "plugins/strategy/slipway_linear.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report["modules"] > 60, report
    assert report["differ"] == [], report
    # Each module and module_utils file once (Mitogen's own scan compiles basic.py and its
    # imports again for every module), and none on the second pass.
    assert report["modules"] < report["compiled"] < 3 * report["modules"], report
    assert report["recompiled"] == 0, report


# Templates and expressions of every path the cache takes: a task argument, a condition, a
# filter-heavy expression, a loop. The report shows that rendering comes out the same.
COMPILED = r"""
- name: Compiled template cache probe
  hosts: localhost
  gather_facts: false
  vars:
    names: [b, a, c]
  tasks:
    - name: Render
      ansible.builtin.set_fact:
        joined: "{{ names | sort | join('-') }}"
        counted: "{{ names | length * 2 }}"
      when: names | length > 2

    - name: Write down what was rendered
      ansible.builtin.copy:
        content: "{{ {'joined': joined, 'counted': counted, 'items': items} | to_json }}"
        dest: "{{ report }}"
        mode: "0644"
      vars:
        items: "{{ names | map('upper') | list }}"
"""


def run_compiled(tmp_path: Path, cache: str) -> dict[str, Any]:
    playbook = tmp_path / "compiled.yml"
    playbook.write_text(COMPILED)
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), SLIPWAY_JINJA_CACHE=cache)
    env.pop("ANSIBLE_STRATEGY", None)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), *LOCALHOST,
         "-e", f"report={report}", str(playbook)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(report.read_text())
    result["warnings"] = proc.stderr
    return result


def cache_files(root: Path) -> dict[str, int]:
    """Each cached file (under its version directory) and its modification time."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("*/*")}


EXPECTED = {"joined": "a-b-c", "counted": 6, "items": ["B", "A", "C"]}


def test_compiled_templates_are_kept_on_disk_and_loaded_by_the_next_run(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    old, foreign = root / "cpython-39-jinja2.11.3-ansible2.9.27-1", root / "notes"
    old.mkdir(parents=True)
    foreign.mkdir()
    first = run_compiled(tmp_path, str(root))
    assert not old.exists(), "another version's code was left"
    assert foreign.exists(), "a directory the cache does not own was removed"
    foreign.rmdir()
    written = cache_files(root)
    assert len(written) >= 4, written
    (version,) = root.iterdir()  # named after the versions whose compiled code it holds
    assert "-jinja" in version.name and "-ansible" in version.name, version.name
    assert version.stat().st_mode & 0o077 == 0, oct(version.stat().st_mode)
    # A second run compiles nothing: every file is loaded, none written again or added.
    second = run_compiled(tmp_path, str(root))
    assert cache_files(root) == written
    for result in (first, second):
        assert {k: result[k] for k in EXPECTED} == EXPECTED


def test_unreadable_cache_files_are_compiled_again(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    run_compiled(tmp_path, str(root))
    files = list(root.glob("*/*"))
    for path in files:
        path.write_bytes(b"not marshal data")
    result = run_compiled(tmp_path, str(root))
    assert {k: result[k] for k in EXPECTED} == EXPECTED
    assert all(p.read_bytes() != b"not marshal data" for p in files), "not rewritten"


def test_the_cache_can_be_turned_off_and_refuses_a_shared_directory(tmp_path: Path) -> None:
    result = run_compiled(tmp_path, "off")
    assert {k: result[k] for k in EXPECTED} == EXPECTED
    assert not list(tmp_path.glob("**/cpython-*")), "off wrote a cache"
    shared = tmp_path / "shared"
    run_compiled(tmp_path, str(shared))
    (version,) = shared.iterdir()
    for path in version.iterdir():
        path.unlink()
    version.chmod(0o777)  # anyone could plant code here: not used
    result = run_compiled(tmp_path, str(shared))
    assert {k: result[k] for k in EXPECTED} == EXPECTED
    assert "is not private to this user" in result["warnings"], result["warnings"][-2000:]
    assert not list(version.iterdir()), "a shared directory was written"
    version.chmod(0o700)
    shared.chmod(0o777)  # the directory above it, too: it could be swapped
    result = run_compiled(tmp_path, str(shared))
    assert "is not private to this user" in result["warnings"], result["warnings"][-2000:]
    assert not list(version.iterdir()), "a directory under a shared one was written"
