"""Every module under plugins/modules/ renders with ansible-doc, and its documented options
match its argument spec, compared the way ansible-test's validate-modules sanity test does
(names and aliases, type, required, default and choices after type coercion, elements,
suboptions). Modules are discovered, so one added later is covered without editing this file."""

from __future__ import annotations

import functools
import json
import runpy
from typing import Any
from unittest import mock

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.common.parameters import DEFAULT_TYPE_VALIDATORS

from tests.conftest import REPO, AnsibleRunner

MODULES_DIR = REPO / "plugins" / "modules"
MODULES = sorted(p.stem for p in MODULES_DIR.glob("*.py") if not p.name.startswith("_"))


def test_modules_are_discovered() -> None:
    assert "postgresql_app" in MODULES


class _Spec(Exception):
    """Raised by the patched AnsibleModule with the keyword arguments main() passed."""


def argument_spec(name: str) -> dict[str, Any]:
    """The argument spec that the module's main() hands to AnsibleModule (validate-modules
    reads it the same way: run the module with AnsibleModule patched to stop at __init__)."""

    def stop(self: Any, *args: Any, **kwargs: Any) -> None:
        raise _Spec(kwargs.get("argument_spec", args[0] if args else {}))

    namespace = runpy.run_path(str(MODULES_DIR / f"{name}.py"), run_name=f"_docs_{name}")
    with mock.patch.object(basic.AnsibleModule, "__init__", stop), pytest.raises(_Spec) as caught:
        namespace["main"]()
    spec: dict[str, Any] = caught.value.args[0]
    return spec


def _coerce(type_name: Any, value: Any) -> Any:
    """The value as the argument's type validator sees it (None stays None)."""
    if value is None:
        return None
    checker = type_name if callable(type_name) else DEFAULT_TYPE_VALIDATORS[type_name]
    return checker(value)


def _is_text(value: Any) -> bool:
    """A documentation text field: a string or a list of strings (not a parsed mapping)."""
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


def _differs(problems: list[str], where: str, field: str, in_spec: Any, in_doc: Any) -> None:
    """Add a line to problems when the spec's and the documentation's field differ."""
    if in_spec != in_doc:
        problems.append(f"{where}: {field} {in_spec!r} in the spec, {in_doc!r} documented")


def compare(spec: dict[str, Any], doc_options: dict[str, Any], context: str = "") -> list[str]:
    """What differs between an argument spec and its documented options, one line each."""
    problems: list[str] = []
    spec_names: set[str] = set()
    for arg, data in spec.items():
        where = f"{context}{arg}"
        aliases = list(data.get("aliases", []))
        spec_names.update([arg, *aliases])
        documented = [n for n in sorted({arg, *aliases}) if n in doc_options]
        if not documented:
            problems.append(f"{where}: in the argument spec, not documented")
            continue
        if len(documented) > 1:
            problems.append(f"{where}: documented more than once, as {documented}")
        doc = doc_options[documented[0]]
        if not _is_text(doc.get("description")):
            problems.append(f"{where}: description is not text: {doc.get('description')!r}")
        if {arg, *aliases} != {documented[0], *doc.get("aliases", [])}:
            problems.append(
                f"{where}: names {sorted({arg, *aliases})} in the spec, "
                f"{sorted({documented[0], *doc.get('aliases', [])})} documented"
            )
        spec_type = data.get("type", "str")
        same = functools.partial(_differs, problems, where)
        if doc.get("type") is None:
            problems.append(f"{where}: type {spec_type!r} is not documented")
        else:
            same("type", spec_type, doc["type"])
        try:
            # Compared after the type's own coercion, as validate-modules does ("5432" == 5432).
            same(
                "default",
                _coerce(spec_type, data.get("default")),
                _coerce(spec_type, doc.get("default")),
            )
            same(
                "choices",
                sorted(str(_coerce(spec_type, c)) for c in data.get("choices", [])),
                sorted(str(_coerce(spec_type, c)) for c in doc.get("choices", [])),
            )
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: a default or choice does not fit type {spec_type!r}: {exc}")
        same("required", bool(data.get("required", False)), bool(doc.get("required", False)))
        same("elements", data.get("elements"), doc.get("elements"))
        if spec_type == "list" and not data.get("elements"):
            problems.append(f"{where}: a list without elements in the spec")
        if data.get("options") or doc.get("suboptions"):
            problems += compare(data.get("options") or {}, doc.get("suboptions") or {}, f"{where}.")
    for name, doc in doc_options.items():
        if not {name, *doc.get("aliases", [])} & spec_names:
            problems.append(f"{context}{name}: documented, not in the argument spec")
    return problems


def _render_json(ansible: AnsibleRunner, name: str) -> dict[str, Any]:
    result = ansible("ansible-doc", "--json", "-M", str(MODULES_DIR), name, timeout=120)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    assert name in parsed, f"ansible-doc --json did not return {name}: {sorted(parsed)}"
    return parsed[name]


@pytest.mark.parametrize("name", MODULES)
def test_module_renders(name: str, ansible: AnsibleRunner) -> None:
    result = ansible("ansible-doc", "-M", str(MODULES_DIR), name, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    assert f"MODULE {name}" in result.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_argument_spec(name: str, ansible: AnsibleRunner) -> None:
    rendered = _render_json(ansible, name)
    doc = rendered["doc"]
    assert doc["module"] == name
    assert isinstance(doc.get("short_description"), str)
    assert _is_text(doc.get("description")), doc.get("description")
    assert all(isinstance(note, str) for note in doc.get("notes", [])), doc.get("notes")
    examples = yaml.safe_load(rendered["examples"] or "")
    assert isinstance(examples, list) and examples, "EXAMPLES is not a YAML list of tasks"
    problems = compare(argument_spec(name), doc.get("options") or {})
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_compare_finds_each_kind_of_difference() -> None:
    """The comparison is able to fail: one seeded difference per check."""
    doc = {
        "port": {"description": "x", "type": "int", "default": 5432},
        "mode": {"description": "x", "type": "str", "choices": ["a", "b"]},
        "tags": {"description": "x", "type": "list", "elements": "str"},
        "name": {"description": "x", "type": "str", "required": True, "aliases": ["n"]},
        "ghost": {"description": "x", "type": "str"},
        "bad": {"description": [{"become": True}], "type": "str"},
    }
    spec = {
        "port": {"type": "int", "default": 5433},
        "mode": {"type": "str", "choices": ["a", "c"]},
        "tags": {"type": "list", "elements": "int"},
        "name": {"type": "str", "aliases": ["nm"]},
        "extra": {"type": "bool"},
        "bad": {"type": "str"},
    }
    problems = "\n".join(compare(spec, doc))
    for expected in (
        "port: default 5433 in the spec, 5432 documented",
        "mode: choices ['a', 'c'] in the spec, ['a', 'b'] documented",
        "tags: elements 'int' in the spec, 'str' documented",
        "name: names ['name', 'nm'] in the spec, ['n', 'name'] documented",
        "name: required False in the spec, True documented",
        "extra: in the argument spec, not documented",
        "ghost: documented, not in the argument spec",
        "bad: description is not text",
    ):
        assert expected in problems
    # Equal after coercion, as validate-modules compares: "5432" documented for an int.
    assert (
        compare(
            {"p": {"type": "int", "default": 5432}},
            {"p": {"description": "x", "type": "int", "default": "5432"}},
        )
        == []
    )
