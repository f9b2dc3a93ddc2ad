"""Unit tests for plugins/modules/app_release.py and plugins/module_utils/slipway_release.py,
on a release root under tmp_path. The module imports ``ansible.module_utils.slipway_release``;
tests/unit/conftest.py makes that name the repository's plugins/module_utils file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from plugins.module_utils import slipway_release as sr
from plugins.modules import app_release
from tests.unit.module_harness import ExitJson, FailJson, patch_exits

META = {
    "version": "0.1.0",
    "git_revision": "3bb674d",
    "alembic_heads": ["a1b2c3d4e5f6"],
    "built_at": "2026-12-02T07:00:00Z",
}


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_exits(monkeypatch)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "releases").mkdir()
    return tmp_path


def install(root: Path, release: str, **meta: Any) -> Path:
    """A release directory with .installed, and release.json when metadata is given."""
    path = root / "releases" / release
    (path / "venv").mkdir(parents=True)
    (path / ".installed").write_text(release + "\n")
    if meta:
        (path / "release.json").write_text(json.dumps({"id": release, **meta}))
    return path


def meta_of(root: Path, release: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "releases" / release / "release.json").read_text())
    return data


def log_of(root: Path) -> list[dict[str, Any]]:
    path = root / "deploy.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(root: Path, check: bool = False, diff: bool = False, **args: Any) -> dict[str, Any]:
    full = dict(args, root=str(root), _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(full), pytest.raises(ExitJson) as exc:
        app_release.main()
    result: dict[str, Any] = exc.value.args[0]
    return result


def fails(root: Path, check: bool = False, **args: Any) -> str:
    full = dict(args, root=str(root), _ansible_check_mode=check)
    with patch_module_args(full), pytest.raises(FailJson) as exc:
        app_release.main()
    msg: str = exc.value.args[0]["msg"]
    return msg


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root with its mtime, mode and (for a link) target: what a run that
    writes nothing leaves as it was."""
    seen = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        seen[str(path)] = (st.st_mtime_ns, st.st_mode, target)
    return seen


# ---- list ----------------------------------------------------------------------------------


def test_list_of_a_bare_host(tmp_path: Path) -> None:
    result = run(tmp_path / "missing")
    assert result["changed"] is False
    assert result["releases"] == [] and result["log"] == []
    assert result["current"] is None and result["previous"] is None
    assert result["rollback_target"] is None


def test_list_orders_newest_first_and_flags(root: Path) -> None:
    install(root, "r1", state="previous", prepared_at="2026-12-01T10:00:00Z")
    install(root, "r2", state="active", prepared_at="2026-12-02T10:00:00Z")
    bare = root / "releases" / "r3"
    bare.mkdir()  # an install under way: no release.json, no .installed
    os.utime(bare, (2e9, 2e9))  # newer than both
    (root / "releases" / ".removing-r0").mkdir()  # a killed prune's leftover: not a release
    os.symlink(root / "releases" / "r2", root / "current")
    result = run(root, state="list")
    assert [r["id"] for r in result["releases"]] == ["r3", "r2", "r1"]
    r3, r2, _ = result["releases"]
    assert r3["state"] == "unknown" and not r3["installed"] and not r3["current"]
    assert r2["current"] and r2["installed"] and r2["state"] == "active"
    assert result["current"] == "r2"
    assert result["previous"] == "r1" and result["rollback_target"] == "r1"


def test_list_returns_the_log_tail(root: Path) -> None:
    for i in range(30):
        sr.append_log(str(root), {"event": "mark", "n": i})
    with (root / "deploy.log").open("a") as handle:
        handle.write("not json\n")
    result = run(root, state="list", log_lines=3)
    assert result["log"] == [
        {"event": "mark", "n": 28},
        {"event": "mark", "n": 29},
        {"raw": "not json"},
    ]
    assert stat.S_IMODE((root / "deploy.log").stat().st_mode) == 0o644


def test_read_log_from_the_end_in_small_blocks(root: Path) -> None:
    for i in range(50):
        sr.append_log(str(root), {"n": i, "pad": "x" * 40})
    assert [e["n"] for e in sr.read_log(str(root), 7, block=16)] == list(range(43, 50))
    assert [e["n"] for e in sr.read_log(str(root), 100, block=16)] == list(range(50))
    assert sr.read_log(str(root), 0) == []


# ---- prepared ------------------------------------------------------------------------------


def test_prepared_refuses_a_release_that_is_not_installed(root: Path) -> None:
    (root / "releases" / "r1").mkdir()  # the install did not finish
    msg = fails(root, state="prepared", release="r1", metadata=META)
    assert "Release r1 is not installed" in msg and "releases/r1/.installed is missing" in msg
    assert not (root / "releases" / "r1" / "release.json").exists()


def test_prepared_writes_metadata_once(root: Path) -> None:
    install(root, "r1")
    result = run(root, state="prepared", release="r1", metadata=dict(META, extra="kept"))
    assert result == {"changed": True, "release": "r1"}
    meta = meta_of(root, "r1")
    assert meta["id"] == "r1" and meta["state"] == "prepared" and meta["extra"] == "kept"
    assert meta["alembic_heads"] == ["a1b2c3d4e5f6"] and meta["reason"] is None
    assert meta["prepared_at"] == meta["state_changed_at"] and meta["deployed_at"] is None
    path = root / "releases" / "r1" / "release.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [e["event"] for e in log_of(root)] == ["prepared"]
    # the same metadata again, even with another built_at: nothing changes, nothing is written
    before = snapshot(root)
    again = run(root, state="prepared", release="r1", metadata=dict(META, built_at="later"))
    assert again["changed"] is False
    assert snapshot(root) == before
    assert [p.name for p in (root / "releases" / "r1").iterdir() if p.name.startswith(".r")] == []


def test_prepared_updates_changed_keys_and_ignores_owned_ones(root: Path) -> None:
    install(root, "r1", **META, state="active", prepared_at="2026-12-01T00:00:00Z")
    result = run(
        root, state="prepared", release="r1", metadata=dict(META, version="0.1.1", state="failed")
    )
    assert result["changed"] is True
    meta = meta_of(root, "r1")
    assert meta["version"] == "0.1.1"
    assert meta["state"] == "active"  # never demoted, and not settable through metadata
    assert meta["prepared_at"] == "2026-12-01T00:00:00Z"
    assert log_of(root) == []  # an update of keys is not an event


@pytest.mark.parametrize("old_state", ["failed", "rolled-back"])
def test_prepared_gives_a_failed_release_a_new_attempt(root: Path, old_state: str) -> None:
    install(root, "r1", **META, state=old_state, reason="readiness 503")
    assert run(root, state="prepared", release="r1", metadata=META)["changed"] is True
    meta = meta_of(root, "r1")
    assert meta["state"] == "prepared" and meta["reason"] is None
    [entry] = log_of(root)
    assert entry["event"] == "prepared" and entry["release"] == "r1"
    assert entry["from_state"] == old_state


def test_prepared_check_mode_writes_nothing(root: Path) -> None:
    install(root, "r1")
    before = snapshot(root)
    assert run(root, check=True, state="prepared", release="r1", metadata=META)["changed"]
    assert snapshot(root) == before


def test_a_release_id_cannot_leave_releases(root: Path) -> None:
    msg = fails(root, state="prepared", release="../etc", metadata=META)
    assert "is not a release id" in msg


def test_a_broken_release_json_is_named(root: Path) -> None:
    path = install(root, "r1") / "release.json"
    path.write_text("{half")
    msg = fails(root, state="prepared", release="r1", metadata=META)
    assert f"Cannot read {path}" in msg and "Fix or remove the file" in msg
    [listed] = run(root, state="list")["releases"]
    assert listed["state"] == "unknown" and f"Cannot read {path}" in listed["error"]


# ---- active --------------------------------------------------------------------------------


def test_active_refuses_a_release_that_is_not_installed(root: Path) -> None:
    (root / "releases" / "r1").mkdir()
    msg = fails(root, state="active", release="r1")
    assert "Release r1 is not installed" in msg
    assert not (root / "current").exists()


def test_active_refuses_a_release_without_metadata(root: Path) -> None:
    install(root, "r1")
    assert "prepare it first" in fails(root, state="active", release="r1")
    # check mode: the prepared task before it would have written release.json
    assert run(root, check=True, state="active", release="r1")["changed"] is True
    assert not (root / "current").exists()


def test_active_refuses_a_failed_release_unless_allowed(root: Path) -> None:
    install(root, "r1", state="failed", reason="readiness 503", state_changed_at="T")
    msg = fails(root, state="active", release="r1")
    assert "Release r1 is marked failed" in msg and "readiness 503" in msg
    assert "allow_failed=true" in msg
    result = run(root, state="active", release="r1", allow_failed=True)
    assert result["changed"] and meta_of(root, "r1")["state"] == "active"


def test_active_switches_and_rotates_states(root: Path) -> None:
    for rid in ("r1", "r2", "r3"):
        install(root, rid)
        run(root, state="prepared", release=rid, metadata=META)
    first = run(root, state="active", release="r1", deployed_by="alice")
    assert first == {"changed": True, "release": "r1", "previous": None, "switched": True}
    assert os.readlink(root / "current") == str(root / "releases" / "r1")
    assert os.path.isabs(os.readlink(root / "current"))
    meta = meta_of(root, "r1")
    assert meta["state"] == "active" and meta["deployed_by"] == "alice" and meta["deployed_at"]

    second = run(root, state="active", release="r2", deployed_by="bob")
    assert second["previous"] == "r1" and second["switched"]
    assert meta_of(root, "r1")["state"] == "previous"
    assert meta_of(root, "r2")["state"] == "active"

    run(root, state="active", release="r3", deployed_by="carol")
    states = {rid: meta_of(root, rid)["state"] for rid in ("r1", "r2", "r3")}
    assert states == {"r1": "prepared", "r2": "previous", "r3": "active"}
    activations = [e for e in log_of(root) if e["event"] == "activate"]
    assert [(e["release"], e["from"], e["by"]) for e in activations] == [
        ("r1", None, "alice"),
        ("r2", "r1", "bob"),
        ("r3", "r2", "carol"),
    ]
    assert set(activations[0]) == {"time", "event", "release", "from", "by"}
    # no temporary link or file is left behind
    assert sorted(p.name for p in root.iterdir()) == [
        ".release.lock",
        "current",
        "deploy.log",
        "releases",
    ]


def test_active_on_the_current_release_writes_nothing(root: Path) -> None:
    install(root, "r1", **META, state="prepared")
    run(root, state="active", release="r1", deployed_by="alice")
    before = snapshot(root)
    result = run(root, state="active", release="r1", deployed_by="bob")
    assert result == {"changed": False, "release": "r1", "previous": "r1", "switched": False}
    assert snapshot(root) == before


def test_active_current_but_marked_failed_is_reactivated_without_a_switch(root: Path) -> None:
    install(root, "r1", **META, state="prepared")
    run(root, state="active", release="r1")
    run(root, state="marked", release="r1", mark="rolled-back", reason="manual")
    result = run(root, state="active", release="r1")
    assert result["changed"] and not result["switched"]
    assert meta_of(root, "r1")["state"] == "active"


def test_active_check_mode_and_diff(root: Path) -> None:
    install(root, "r1", state="active")
    install(root, "r2", state="prepared")
    os.symlink(root / "releases" / "r1", root / "current")
    before = snapshot(root)
    result = run(root, check=True, diff=True, state="active", release="r2")
    assert result["changed"] and result["switched"] and result["previous"] == "r1"
    assert result["diff"] == {"before": {"current": "r1"}, "after": {"current": "r2"}}
    assert snapshot(root) == before


def test_the_link_exists_at_every_moment_of_a_switch(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(root, "r1", state="active")
    install(root, "r2", state="prepared")
    os.symlink(root / "releases" / "r1", root / "current")
    real_replace = os.replace
    seen: list[tuple[str, str]] = []

    def spy(src: Any, dst: Any) -> None:
        if str(dst) == str(root / "current"):
            # the new link is complete under its temporary name, the old one is still there
            assert os.readlink(src) == str(root / "releases" / "r2")
            assert os.readlink(dst) == str(root / "releases" / "r1")
            seen.append((os.path.dirname(src), os.readlink(dst)))
        real_replace(src, dst)
        assert os.path.lexists(root / "current")

    monkeypatch.setattr(sr.os, "replace", spy)
    run(root, state="active", release="r2")
    assert seen == [(str(root), str(root / "releases" / "r1"))]
    assert os.readlink(root / "current") == str(root / "releases" / "r2")


def test_a_failed_rename_keeps_the_old_link(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(root, "r1")
    os.symlink(root / "releases" / "r1", root / "current")

    def broken(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sr.os, "replace", broken)
    with pytest.raises(OSError):
        sr.switch_current(str(root), "r1")
    assert sorted(p.name for p in root.iterdir()) == ["current", "releases"]


# ---- marked --------------------------------------------------------------------------------


def test_marked_sets_state_and_reason_once(root: Path) -> None:
    install(root, "r1", **META, state="active")
    args: dict[str, Any] = {
        "state": "marked",
        "release": "r1",
        "mark": "failed",
        "reason": "readiness 503",
    }
    before = snapshot(root)
    assert run(root, check=True, **args)["changed"] is True
    assert snapshot(root) == before
    assert run(root, **args) == {"changed": True, "release": "r1"}
    meta = meta_of(root, "r1")
    assert meta["state"] == "failed" and meta["reason"] == "readiness 503"
    [entry] = log_of(root)
    assert entry["event"] == "mark" and entry["state"] == "failed"
    assert entry["from_state"] == "active"
    before = snapshot(root)
    assert run(root, **args)["changed"] is False
    assert snapshot(root) == before
    assert run(root, **dict(args, reason="other reason"))["changed"] is True


def test_marked_names_a_missing_release(root: Path) -> None:
    msg = fails(root, state="marked", release="r9", mark="failed", reason="x")
    assert "Release r9 does not exist" in msg


def test_marked_needs_mark(root: Path) -> None:
    install(root, "r1")
    assert "mark" in fails(root, state="marked", release="r1")


# ---- rollback target -----------------------------------------------------------------------


def _rel(rid: str, state: str, installed: bool = True, current: bool = False) -> dict[str, Any]:
    return {"id": rid, "state": state, "installed": installed, "current": current}


@pytest.mark.parametrize(
    ("releases", "target"),
    [
        ([_rel("c", "active", current=True), _rel("b", "prepared"), _rel("a", "previous")], "a"),
        # the previous release is gone from disk: the newest installed prepared one
        (
            [
                _rel("c", "active", current=True),
                _rel("b", "failed"),
                _rel("a2", "prepared"),
                _rel("a", "previous", installed=False),
                _rel("z", "prepared"),
            ],
            "a2",
        ),
        ([_rel("c", "active", current=True), _rel("b", "rolled-back"), _rel("a", "failed")], None),
        ([_rel("c", "active", current=True), _rel("b", "unknown", installed=False)], None),
        ([], None),
    ],
)
def test_rollback_target(releases: list[dict[str, Any]], target: str | None) -> None:
    assert sr.rollback_target(releases) == target


# ---- pruned --------------------------------------------------------------------------------


def _history(root: Path) -> None:
    """r0 (oldest) ... r7 (newest); r0 is current, r1 the previous one."""
    for i in range(8):
        state = {0: "active", 1: "previous"}.get(i, "prepared")
        install(root, f"r{i}", state=state, prepared_at=f"2026-12-0{i + 1}T00:00:00Z")
    os.symlink(root / "releases" / "r0", root / "current")


def test_pruned_never_removes_current_nor_rollback_target(root: Path) -> None:
    _history(root)
    before = snapshot(root)
    predicted = run(root, check=True, state="pruned", keep=3)
    assert predicted == {"changed": True, "removed": ["r4", "r3", "r2"]}
    assert snapshot(root) == before
    result = run(root, state="pruned", keep=3)
    assert result == predicted
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["r0", "r1", "r5", "r6", "r7"]
    [entry] = log_of(root)
    assert entry["event"] == "prune" and entry["removed"] == ["r4", "r3", "r2"]
    again = run(root, state="pruned", keep=3)
    assert again == {"changed": False, "removed": []}
    assert len(log_of(root)) == 1


def test_pruned_finishes_a_killed_removal(root: Path) -> None:
    install(root, "r1", state="active")
    (root / "releases" / ".removing-r0" / "venv").mkdir(parents=True)
    result = run(root, state="pruned")
    assert result == {"changed": True, "removed": []}
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["r1"]


def test_an_os_error_is_a_sentence(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(root, "r1")

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(root / "deploy.log"))

    monkeypatch.setattr(sr, "append_log", denied)
    monkeypatch.setattr(app_release, "append_log", denied)
    msg = fails(root, state="prepared", release="r1", metadata=META)
    assert f"app_release state=prepared under {root} failed" in msg
    assert "Permission denied" in msg and "become: true" in msg


def test_pruned_keeps_at_least_two(root: Path) -> None:
    assert "keep at least 2" in fails(root, state="pruned", keep=1)


# ---- shared helpers ------------------------------------------------------------------------


def test_atomic_write_replaces_whole_files(root: Path) -> None:
    path = root / "f.json"
    sr.atomic_write(str(path), "one\n")
    sr.atomic_write(str(path), "two\n", mode=0o600)
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in root.iterdir() if p.name.startswith(".f.json")] == []


def test_lock_waits_a_bounded_time(root: Path) -> None:
    with (
        sr.locked(str(root)),
        pytest.raises(sr.ReleaseError, match=r"Another run holds .*gave up after"),
        sr.locked(str(root), timeout=0.3),
    ):
        pass
    with sr.locked(str(root), timeout=0.3):
        pass
