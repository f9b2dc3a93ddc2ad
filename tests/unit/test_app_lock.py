"""Unit tests for plugins/modules/app_lock.py on real files under tmp_path, including runs that
race for the lock from threads and from separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from plugins.modules import app_lock
from tests.conftest import REPO
from tests.unit.module_harness import ExitJson, FailJson, patch_exits


@pytest.fixture(autouse=True)
def _patch_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_exits(monkeypatch)


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "slipway" / "fleet.lock"


def _args(path: Path, token: str = "run-a", **kw: Any) -> dict[str, Any]:
    return {"path": str(path), "token": token, "holder": f"{token}@laptop",
            "operation": "deploy 0.1.0-abc", **kw}  # fmt: skip


def _run(args: dict[str, Any], check: bool = False) -> Any:
    with patch_module_args(dict(args, _ansible_check_mode=check)), pytest.raises(ExitJson) as exc:
        app_lock.main()
    return exc.value.args[0]


def _fail(args: dict[str, Any]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(FailJson) as exc:
        app_lock.main()
    result: dict[str, Any] = exc.value.args[0]
    return result


def _age_lock(path: Path, seconds: float) -> None:
    """Move the lock's refresh time `seconds` into the past."""
    content = json.loads(path.read_text())
    content["refreshed_at"] -= seconds
    path.write_text(json.dumps(content))


def test_acquire_creates_the_directory_and_the_lock(lock_path: Path) -> None:
    result = _run(_args(lock_path, ttl=600))
    assert result["changed"] and result["held"] and not result["broke_stale"]
    content = json.loads(lock_path.read_text())
    assert content == result["lock"]
    assert content["token"] == "run-a" and content["holder"] == "run-a@laptop"
    assert content["operation"] == "deploy 0.1.0-abc" and content["ttl"] == 600
    assert content["acquired_at_iso"].endswith("+00:00")
    assert oct(lock_path.parent.stat().st_mode & 0o777) == "0o755"
    assert [p.name for p in lock_path.parent.iterdir()] == ["fleet.lock"]  # no temporary left


def test_same_token_refreshes_without_change(lock_path: Path) -> None:
    first = _run(_args(lock_path))
    _age_lock(lock_path, 100)
    again = _run(_args(lock_path))
    assert not again["changed"] and again["held"] and again["age"] >= 100
    content = json.loads(lock_path.read_text())
    assert content["acquired_at"] == first["lock"]["acquired_at"]
    assert content["refreshed_at"] > first["lock"]["refreshed_at"] - 1  # moved back to now


def test_held_lock_is_refused_with_a_sentence(lock_path: Path) -> None:
    _run(_args(lock_path, ttl=3600))
    before = lock_path.read_text()
    result = _fail(_args(lock_path, token="run-b", hint="Wait, or pass -e break=true."))
    msg = result["msg"]
    assert msg.startswith(f"The fleet lock {lock_path} on ")
    assert "is held by run-a@laptop for deploy 0.1.0-abc since 20" in msg
    assert "s ago; it expires after 3600 s). Wait, or pass -e break=true." in msg
    assert result["lock"]["token"] == "run-a"
    assert lock_path.read_text() == before


def test_stale_lock_is_taken_over(lock_path: Path) -> None:
    _run(_args(lock_path, ttl=60))
    _age_lock(lock_path, 61)
    result = _run(_args(lock_path, token="run-b", ttl=3600))
    assert result["changed"] and result["broke_stale"] and not result["broke"]
    assert result["stale"] and result["previous"]["token"] == "run-a"
    assert json.loads(lock_path.read_text())["token"] == "run-b"


def test_stale_is_judged_by_the_locks_own_ttl(lock_path: Path) -> None:
    _run(_args(lock_path, ttl=3600))
    _age_lock(lock_path, 120)
    # a newcomer's short ttl does not make another's live lock stale
    assert "is held by run-a@laptop" in _fail(_args(lock_path, token="run-b", ttl=60))["msg"]


def test_break_lock_takes_a_live_lock(lock_path: Path) -> None:
    _run(_args(lock_path))
    result = _run(_args(lock_path, token="run-b", break_lock=True))
    assert result["changed"] and result["broke"] and not result["broke_stale"]
    assert result["previous"]["holder"] == "run-a@laptop"
    assert json.loads(lock_path.read_text())["token"] == "run-b"


def test_release_own_lock(lock_path: Path) -> None:
    _run(_args(lock_path))
    result = _run(_args(lock_path, state="absent"))
    assert result["changed"] and not lock_path.exists()
    again = _run(_args(lock_path, state="absent"))
    assert not again["changed"] and again["lock"] is None


def test_release_leaves_another_runs_lock(lock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, w: warnings.append(w))
    _run(_args(lock_path))
    result = _run(_args(lock_path, token="run-b", state="absent"))
    assert not result["changed"] and result["held_by"] == "run-a@laptop"
    assert lock_path.exists()
    assert warnings and "held by run-a@laptop" in warnings[0]


def test_release_without_directory(tmp_path: Path) -> None:
    result = _run(_args(tmp_path / "none" / "fleet.lock", state="absent"))
    assert not result["changed"]


def test_query(lock_path: Path) -> None:
    empty = _run({"path": str(lock_path), "state": "query"})
    assert empty == {"changed": False, "held": False, "lock": None, "age": None, "stale": False}
    assert not lock_path.parent.exists()
    _run(_args(lock_path, ttl=60))
    _age_lock(lock_path, 90)
    held = _run({"path": str(lock_path), "state": "query"})
    assert held["held"] and held["stale"] and held["age"] >= 90
    assert held["lock"]["holder"] == "run-a@laptop" and not held["changed"]


def test_unreadable_lock_is_shown_and_goes_stale(lock_path: Path) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text("{half a")
    assert "held by an unreadable lock file" in _fail(_args(lock_path))["msg"]
    os.utime(lock_path, (0, 0))
    assert _run(_args(lock_path))["broke_stale"]


def test_check_mode_is_honest_and_writes_nothing(lock_path: Path) -> None:
    would = _run(_args(lock_path), check=True)
    assert would["changed"] and not lock_path.parent.exists()
    _run(_args(lock_path, ttl=60))
    _age_lock(lock_path, 61)
    before = lock_path.read_text()
    takeover = _run(_args(lock_path, token="run-b"), check=True)
    assert takeover["changed"] and takeover["broke_stale"]
    refresh = _run(_args(lock_path, token="run-a"), check=True)
    assert not refresh["changed"]
    release = _run(_args(lock_path, token="run-a", state="absent"), check=True)
    assert release["changed"]
    assert lock_path.read_text() == before


def test_token_is_required() -> None:
    assert "token" in _fail({"path": "/tmp/x.lock"})["msg"]


def _race(lock: app_lock.FleetLock, runs: int) -> list[tuple[str, dict[str, Any] | None]]:
    """`runs` threads call acquire at once, each with its own token: (token, result or None
    when refused) for each."""
    barrier = threading.Barrier(runs)
    outcomes: list[tuple[str, dict[str, Any] | None]] = []

    def contend(token: str) -> None:
        params = {"token": token, "holder": token, "operation": "deploy", "ttl": 3600,
                  "break_lock": False, "hint": ""}  # fmt: skip
        barrier.wait(5)
        try:
            outcomes.append((token, lock.acquire(params, check=False)))
        except app_lock.LockHeld:
            outcomes.append((token, None))

    threads = [threading.Thread(target=contend, args=(f"t{i}",)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(outcomes) == runs, outcomes
    return outcomes


def test_racing_threads_exactly_one_wins(tmp_path: Path) -> None:
    for round_ in range(10):
        lock = app_lock.FleetLock(str(tmp_path / f"r{round_}" / "fleet.lock"))
        winners = [token for token, result in _race(lock, 8) if result is not None]
        assert len(winners) == 1, winners
        assert json.loads(Path(lock.path).read_text())["token"] == winners[0]


def test_racing_takeovers_of_a_stale_lock(lock_path: Path) -> None:
    _run(_args(lock_path, ttl=1))
    _age_lock(lock_path, 10)
    outcomes = _race(app_lock.FleetLock(str(lock_path)), 6)
    broke = [token for token, result in outcomes if result is not None and result["broke_stale"]]
    assert len(broke) == 1 and sum(result is not None for _, result in outcomes) == 1
    assert json.loads(lock_path.read_text())["token"] == broke[0]


RACER = """
import sys, time
from plugins.modules.app_lock import FleetLock, LockHeld
path, token, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
try:
    FleetLock(path).acquire({"token": token, "holder": token, "operation": "deploy",
                             "ttl": 3600, "break_lock": False, "hint": ""}, check=False)
    print("won")
except LockHeld:
    print("refused")
"""


def test_racing_processes_exactly_one_wins(lock_path: Path) -> None:
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(lock_path), f"p{i}", str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outputs) == ["refused", "refused", "refused", "won"], outputs
    winner = f"p{outputs.index('won')}"
    assert json.loads(lock_path.read_text())["token"] == winner
