"""Phase tags work whatever tags are asked for (README, "Tags"), read from Ansible's own
view of them (`ansible-playbook site.yml --list-tasks`, tags resolved through plays, roles
and imports):

- a role's preflight runs under every tag that runs any of the role's tasks;
- a phase that needs another phase's fact gets it under every tag that runs the phase:
  the app's release id (build) and release on the host (install), python's
  `python_interpreter_version` (verify) for the app's build;
- the site preflight runs under any tag;
- README.md's table and each role's README name every tag there is, and no other.

Selection is Ansible's rule: `--tags X` runs a task tagged X or `always`. The VM test
(tests/vm/test_check_mode.py) runs `--tags configure` end to end."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, AnsibleRunner

GROUPS = ["lb", "web", "worker", "db", "redis", "monitoring"]
ROLES = ["base", "postgresql", "postgresql_backup", "redis", "python", "app", "nginx", "certbot"]


@dataclass(frozen=True)
class Task:
    play: str
    role: str  # "" for a play's own tasks
    name: str
    tags: frozenset[str]

    def runs_under(self, tag: str) -> bool:
        return tag in self.tags or "always" in self.tags


def parse(listing: str) -> list[Task]:
    tasks, play = [], ""
    for line in listing.splitlines():
        if m := re.match(r"^  play #\d+ \([^)]*\): (.*)\tTAGS: \[.*\]$", line):
            play = m.group(1)
        elif m := re.match(r"^      (.*)\tTAGS: \[(.*)\]$", line):
            role, sep, name = m.group(1).partition(" : ")
            if not sep:
                role, name = "", m.group(1)
            tags = frozenset(t.strip() for t in m.group(2).split(",") if t.strip())
            tasks.append(Task(play, role, name, tags))
    return tasks


_LISTING: dict[str, list[Task]] = {}


@pytest.fixture
def tasks(tmp_path: Path, ansible: AnsibleRunner) -> list[Task]:
    """site.yml's tasks as Ansible lists them (listed once per test session)."""
    if "site" not in _LISTING:
        inv = tmp_path / "hosts.yml"
        inv.write_text(
            "all:\n  hosts:\n    h1: {}\n  children:\n"
            + "".join(f"    {group}:\n      hosts:\n        h1: {{}}\n" for group in GROUPS)
        )
        proc = ansible("ansible-playbook", "-i", str(inv), "site.yml", "--list-tasks", timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        _LISTING["site"] = parse(proc.stdout)
    found = _LISTING["site"]
    assert {t.role for t in found} >= set(ROLES)
    return found


def all_tags(tasks: list[Task]) -> set[str]:
    return {tag for t in tasks for tag in t.tags} - {"always"}


def test_every_role_preflight_runs_under_every_tag_of_the_role(tasks: list[Task]) -> None:
    missing = []
    for role in ROLES:
        own = [t for t in tasks if t.role == role and "always" not in t.tags]
        checks = [t for t in own if "preflight" in t.tags]
        assert checks, f"{role} has no task tagged preflight"
        for tag in sorted({tag for t in own for tag in t.tags}):
            missing += [f"{role}: `--tags {tag}` skips {c.name!r}" for c in checks
                        if not c.runs_under(tag)]  # fmt: skip
    assert not missing, "\n".join(missing)


def walk(tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from walk(task.get(key) or [])


def home_phases(role: str) -> dict[str, str]:
    """Task name -> the phase whose file holds it (tasks/main.yml imports each phase's file
    with the tags [role, phase, ...])."""
    tasks_dir = REPO / "roles" / role / "tasks"
    phases = {}
    for item in yaml.safe_load((tasks_dir / "main.yml").read_text()):
        phase = item["tags"][1]
        for task in walk(
            yaml.safe_load((tasks_dir / item["ansible.builtin.import_tasks"]).read_text())
        ):
            if "name" in task:
                phases[task["name"]] = phase
    return phases


def makers(role: str, fact: str) -> set[str]:
    """Names of the role's tasks that register or set_fact `fact`."""
    return {
        task["name"]
        for path in (REPO / "roles" / role / "tasks").glob("*.yml")
        for task in walk(yaml.safe_load(path.read_text()) or [])
        if task.get("register") == fact or fact in (task.get("ansible.builtin.set_fact") or {})
    }


@pytest.mark.parametrize(
    ("provider", "fact", "consumer", "phases"),
    [
        ("app", "_app_release_id", "app", {"install", "configure", "migrate", "service"}),
        ("app", "__app_installed", "app", {"configure", "migrate", "service"}),
        ("python", "python_interpreter_version", "app", {"build"}),
    ],
)
def test_a_phase_gets_the_facts_it_needs_whatever_tags_are_asked_for(
    tasks: list[Task], provider: str, fact: str, consumer: str, phases: set[str]
) -> None:
    names = makers(provider, fact)
    providers = [t for t in tasks if t.role == provider and t.name in names]
    home = home_phases(consumer)
    users = [t for t in tasks if t.role == consumer and home.get(t.name) in phases]
    assert names and providers and users, (names, providers, users)
    missing = {
        f"`--tags {tag}` runs {u.role} : {u.name!r} but not {p.role} : {p.name!r} ({fact})"
        for u in users
        for tag in u.tags - {"always"}
        for p in providers
        if not p.runs_under(tag)
    }
    assert not missing, "\n".join(sorted(missing))


def test_the_site_preflight_runs_under_any_tag(tasks: list[Task]) -> None:
    site = [t for t in tasks if not t.role and t.play.startswith("Preflight")]
    assert len(site) >= 2
    assert all("always" in t.tags for t in site), [t.name for t in site if "always" not in t.tags]


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", text))


def section(text: str, heading: str) -> str:
    m = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,3}} |\Z)", text, re.M | re.S)
    assert m, f"no '{heading}' section"
    return m.group(2)


def test_the_readme_table_names_every_tag_and_only_those(tasks: list[Task]) -> None:
    table = section((REPO / "README.md").read_text(), "Tags")
    documented = set()
    for row in re.findall(r"^\| (.*?) \|", table, re.M):
        documented |= backticked(row)
    documented -= {"always"}
    assert documented == all_tags(tasks), (
        f"README.md, Tags: undocumented {sorted(all_tags(tasks) - documented)}, "
        f"no such tag {sorted(documented - all_tags(tasks))}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_each_role_readme_names_its_tags(tasks: list[Task], role: str) -> None:
    text = section((REPO / "roles" / role / "README.md").read_text(), "Tags")
    tags = {tag for t in tasks if t.role == role for tag in t.tags} - {"always"}
    assert tags <= backticked(text), (
        f"roles/{role}/README.md, Tags: missing {sorted(tags - backticked(text))}"
    )


def test_parse_reads_roles_and_tags() -> None:
    listing = (
        "  play #3 (all): Base system for every host\tTAGS: []\n"
        "    tasks:\n"
        "      base : Check that this is Debian 12\tTAGS: [base, install, preflight]\n"
        "      Check the domain names\tTAGS: [always, preflight]\n"
    )
    assert parse(listing) == [
        Task("Base system for every host", "base", "Check that this is Debian 12",
             frozenset({"base", "install", "preflight"})),
        Task("Base system for every host", "", "Check the domain names",
             frozenset({"always", "preflight"})),
    ]  # fmt: skip
