"""Unit tests for the backup tool's verification helpers, metrics, WAL salvage and command line
(slipway_backup.verify, metrics, restore, cli), under tmp_path. No command runs: subprocess.run
is refused, and pgBackRest is the fake of test_slipway_backup_repo.py (imported by the name
pytest gives it)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from slipway_backup import cli, common, metrics, repo, restore, verify
from slipway_backup.common import BackupError, Config

# The module pytest imported (tests/unit on sys.path), not a second copy of it.
from test_slipway_backup_repo import (
    DIFF,
    FULL,
    INFO,
    VERIFY_BAD,
    VERIFY_OK,
    FakeRun,
    config,
    found,
)

NOW = 1796220000.25


@pytest.fixture(autouse=True)
def _no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a unit test tried to run {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(metrics, "now", lambda: NOW)
    monkeypatch.setattr(repo, "now", lambda: NOW)  # after every backup in INFO


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return config(tmp_path)


# --- verify.checksum_sql and verify.compare -----------------------------------------------


def test_checksum_sql_one_select_per_table() -> None:
    """One SELECT per table (name, count, order-free sum of 60-bit row hashes), UNION ALL."""
    sql = verify.checksum_sql(["public.jobs", '"Odd".x'])
    parts = sql.split(" UNION ALL ")
    assert len(parts) == 2
    assert parts[0] == (
        "SELECT 'public.jobs', count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))"
        "::bit(60)::bigint), 0) FROM public.jobs t"
    )
    assert parts[1].startswith("SELECT '\"Odd\".x', count(*), ")
    assert parts[1].endswith(' FROM "Odd".x t')
    assert verify.checksum_sql([]) == ""


def test_compare_identical() -> None:
    """The same counts and sums on both sides: no problems."""
    live = {"public.jobs": ["10", "123"], "public.users": ["2", "0"]}
    assert verify.compare(live, dict(live)) == []


def test_compare_reports_each_difference() -> None:
    """Row counts, contents and tables on one side only, each as a sentence, by table name."""
    live = {"public.a": ["10", "1"], "public.b": ["5", "7"], "public.c": ["1", "1"]}
    restored = {"public.a": ["9", "1"], "public.b": ["5", "8"], "public.d": ["0", "0"]}
    assert verify.compare(live, restored) == [
        "public.a: 10 rows live, 9 restored",
        "public.b: same 5 rows but different contents",
        "public.c is only in the live database",
        "public.d is only in the restored database",
    ]


# --- metrics ------------------------------------------------------------------------------

STATE: dict[str, Any] = {
    "backup_full": {"ok": True, "finished": 1796210764.5, "error": None},
    "backup_full_ok": {"finished": 1796210764.5, "backup_seconds": 72.4, "repo_bytes": 4088323},
    "verify": {"ok": False, "finished": 1796211000.75, "set": FULL},
}
ARCHIVE = {
    "ready": 2.0,
    "oldest_ready_age": 61.5,
    "failed": 3.0,
    "last_archived": 1796219990.125,
    "last_failed": 1796100000.0,
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text, parsed by prometheus_client, by name and labels;
    fails on a family that is not a gauge (what a second, untyped group of a name becomes)."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", f"{family.name} parsed as {family.type}"
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def declarations(text: str) -> dict[str, int]:
    lines = text.splitlines()
    names = [line.split()[2] for line in lines if line.startswith(("# HELP ", "# TYPE "))]
    return {name: names.count(name) for name in names}


def test_render_metrics_full(cfg: Config) -> None:
    """State, repository and archiver all present: each metric once declared, valid to
    prometheus_client, with the values and labels it was given."""
    text = metrics.render_metrics(cfg, STATE, found(), ARCHIVE)
    assert set(declarations(text).values()) == {2}  # one HELP and one TYPE each
    got = samples(text)
    st, full = (("stanza", "slipway"),), (("stanza", "slipway"), ("type", "full"))
    assert got == {
        ("slipway_backup_last_run_timestamp_seconds", full): 1796210764.5,
        ("slipway_backup_last_run_success", full): 1.0,
        ("slipway_backup_last_success_timestamp_seconds", full): 1796210764.5,
        ("slipway_backup_last_duration_seconds", full): 72.4,
        ("slipway_backup_last_size_bytes", full): 4088323.0,
        ("slipway_backup_verify_success", st): 0.0,
        ("slipway_backup_verify_timestamp_seconds", st): 1796211000.75,
        ("slipway_backup_repository_backups", st): 2.0,  # the errored incr is not counted
        ("slipway_backup_oldest_recovery_timestamp_seconds", st): 1796206572.0,
        ("slipway_backup_wal_ready_segments", st): 2.0,
        ("slipway_backup_wal_archive_lag_seconds", st): 61.5,
        ("slipway_backup_wal_archive_failures", st): 3.0,
        ("slipway_backup_wal_last_archived_timestamp_seconds", st): 1796219990.125,
        ("slipway_backup_metrics_timestamp_seconds", st): NOW,
    }
    # full precision as text, not 1.79621e+09
    assert (
        'slipway_backup_last_run_timestamp_seconds{stanza="slipway",type="full"} 1796210764.5\n'
        in text
    )
    assert "e+" not in text
    assert text.endswith(
        'slipway_backup_metrics_timestamp_seconds{stanza="slipway"} 1796220000.25\n'
    )


def test_render_metrics_without_data(cfg: Config) -> None:
    """No state, no repository, no archiver: only the file's own timestamp."""
    text = metrics.render_metrics(cfg, {}, None, None)
    assert text == (
        "# HELP slipway_backup_metrics_timestamp_seconds When this file was written.\n"
        "# TYPE slipway_backup_metrics_timestamp_seconds gauge\n"
        'slipway_backup_metrics_timestamp_seconds{stanza="slipway"} 1796220000.25\n'
    )


def test_render_metrics_empty_repository_and_no_archiver_stats(cfg: Config) -> None:
    """No backups yet: a count of 0 and no recovery timestamp; a failed pg_stat_archiver query
    leaves out its two metrics but keeps the pg_wal ones."""
    got = samples(metrics.render_metrics(cfg, {}, [], {"ready": 0.0, "oldest_ready_age": 0.0}))
    assert {name for name, _ in got} == {
        "slipway_backup_repository_backups",
        "slipway_backup_wal_ready_segments",
        "slipway_backup_wal_archive_lag_seconds",
        "slipway_backup_metrics_timestamp_seconds",
    }
    assert got[("slipway_backup_repository_backups", (("stanza", "slipway"),))] == 0.0


def test_render_metrics_groups_each_metric_with_two_backup_types(cfg: Config) -> None:
    """With a full and a diff backup recorded, each metric's samples form one group."""
    state = {
        **STATE,
        "backup_diff": {"ok": False, "finished": 1796214400.0, "error": "pgbackrest failed"},
    }
    text = metrics.render_metrics(cfg, state, found(), ARCHIVE)
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names)), f"metrics split into groups: {names}"
    samples(text)


def test_state_round_trip(cfg: Config) -> None:
    """A recorded result is read back by a new State; no temporary file is left."""
    assert metrics.State(cfg).data == {}
    metrics.State(cfg).record("verify", {"ok": True, "finished": 1796211000.75, "set": FULL})
    state = metrics.State(cfg)
    state.record("backup_full", {"ok": False, "finished": 1.5, "error": "x"})
    assert metrics.State(cfg).data == {
        "verify": {"ok": True, "finished": 1796211000.75, "set": FULL},
        "backup_full": {"ok": False, "finished": 1.5, "error": "x"},
    }
    assert sorted(p.name for p in cfg.state_dir.iterdir()) == ["state.json"]


def test_state_unreadable_file_starts_empty(cfg: Config) -> None:
    """A damaged state file does not stop a backup: it starts again from nothing."""
    cfg.state_dir.mkdir()
    (cfg.state_dir / "state.json").write_text("{half")
    assert metrics.State(cfg).data == {}


def test_write_metrics_replaces_the_file_atomically(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    """The text is written beside the target and renamed over it: the old file stays whole
    until the rename; the new one is world-readable for node_exporter."""
    monkeypatch.setattr(metrics, "backups", lambda c: (found(), {}))
    monkeypatch.setattr(metrics, "archive_status", lambda c: ARCHIVE)
    cfg.metrics_path.parent.mkdir()
    cfg.metrics_path.write_text("old\n")
    renames: list[tuple[str, str, str]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        renames.append((str(src), str(dst), Path(dst).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    state = metrics.State(cfg)
    state.data = dict(STATE)
    assert metrics.write_metrics(cfg, state) == str(cfg.metrics_path)
    tmp = cfg.metrics_path.with_name(".slipway_backup.prom.tmp")
    assert renames == [(str(tmp), str(cfg.metrics_path), "old\n")]
    assert cfg.metrics_path.read_text() == metrics.render_metrics(cfg, STATE, found(), ARCHIVE)
    assert cfg.metrics_path.stat().st_mode & 0o777 == 0o644
    assert not tmp.exists()


def test_write_metrics_without_repository_or_archiver(
    monkeypatch: pytest.MonkeyPatch, cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """When pgBackRest or PostgreSQL cannot answer the file is still written, without their
    metrics, and the reason goes to stderr."""

    def down(c: Config) -> Any:
        raise BackupError("`pgbackrest info` failed (exit 1): down")

    monkeypatch.setattr(metrics, "backups", down)
    monkeypatch.setattr(metrics, "archive_status", down)
    metrics.write_metrics(cfg, metrics.State(cfg))
    assert cfg.metrics_path.read_text() == metrics.render_metrics(cfg, {}, None, None)
    assert "metrics without the repository: `pgbackrest info` failed" in capsys.readouterr().err


# --- restore.salvage_wal ------------------------------------------------------------------


def test_salvage_wal_copies_only_missing_segments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """WAL segments (.partial ones too) and timeline history files the restored pg_wal lacks
    are copied and given to postgres; existing segments, .backup and other files are left
    alone."""
    chowned: list[tuple[str, str, str]] = []
    monkeypatch.setattr(restore.shutil, "chown", lambda p, u, g: chowned.append((str(p), u, g)))
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "pg_wal" / "archive_status").mkdir(parents=True)
    (new / "pg_wal").mkdir(parents=True)
    for name in (
        "000000010000000000000005",
        "000000010000000000000006",
        "000000010000000000000007.partial",
        "00000002.history",
        "000000010000000000000004.00000028.backup",
        "00000001000000000000000a",  # not upper-case hex: not a segment name
        "notes.txt",
    ):
        (old / "pg_wal" / name).write_text(f"old {name}")
    (new / "pg_wal" / "000000010000000000000005").write_text("restored")
    assert restore.salvage_wal(old, new) == 3
    copied = {"000000010000000000000006", "000000010000000000000007.partial", "00000002.history"}
    assert {p.name for p in (new / "pg_wal").iterdir()} == copied | {"000000010000000000000005"}
    assert (new / "pg_wal" / "000000010000000000000005").read_text() == "restored"
    for name in copied:
        assert (new / "pg_wal" / name).read_text() == f"old {name}"
    assert sorted(chowned) == sorted(
        (str(new / "pg_wal" / n), "postgres", "postgres") for n in copied
    )
    assert restore.salvage_wal(old, new) == 0  # a second run copies nothing


def test_salvage_wal_without_pg_wal(tmp_path: Path) -> None:
    """An old cluster without pg_wal (or a new one not restored) salvages nothing."""
    (tmp_path / "new" / "pg_wal").mkdir(parents=True)
    assert restore.salvage_wal(tmp_path / "old", tmp_path / "new") == 0


# --- cli.main -----------------------------------------------------------------------------


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch, cfg: Config) -> Config:
    """Config.load returns cfg; the repository lists INFO's backups."""
    listing = repo.parse_info(json.loads(json.dumps(INFO)), "slipway")
    monkeypatch.setattr(Config, "load", lambda *a: cfg)
    monkeypatch.setattr(repo, "backups", lambda c: listing)
    monkeypatch.setattr(cli, "backups", lambda c: listing)
    return cfg


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    """Exit code, the JSON object on stdout, and stderr."""
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    result: dict[str, Any] = json.loads(out)
    return rc, result, err


def test_main_missing_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No settings file: exit 1, the error as JSON on stdout and FAILED on stderr."""
    missing = tmp_path / "slipway-backup.json"
    real_load: Callable[[Path], Config] = Config.load
    monkeypatch.setattr(Config, "load", lambda *a: real_load(missing))
    rc, result, err = run_main(capsys, "list")
    assert rc == 1
    assert result["ok"] is False
    assert result["error"].startswith(f"cannot read {missing}: [Errno 2] No such file")
    assert f"slipway-backup: FAILED: cannot read {missing}" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["backup", "--type", "weekly"],
        ["restore", "--latest"],  # neither --live nor --scratch
        ["restore", "--latest", "--set", FULL, "--scratch"],  # two targets
        ["check-target"],
        ["restore", "--latest", "--scratch", "--port", "five"],
    ],
)
def test_main_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad arguments are argparse's exit 2, before any setting is read."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: slipway-backup" in capsys.readouterr().err


def test_main_restore_live_needs_confirm(
    monkeypatch: pytest.MonkeyPatch, loaded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """restore --live without --confirm changes nothing and says what is missing (exit 1),
    before it reads or verifies the repository."""
    checked: list[str] = []

    def verify_set(c: Config, label: str) -> dict[str, Any]:
        checked.append(label)
        return {"ok": True, "seconds": 1.0}

    monkeypatch.setattr(restore, "verify_set", verify_set)
    loaded.data_dir.mkdir(parents=True)
    (loaded.data_dir / "PG_VERSION").write_text("15\n")
    rc, result, _ = run_main(capsys, "restore", "--latest", "--live")
    assert (rc, result) == (
        1,
        {"ok": False, "error": "a restore over the live database needs --confirm"},
    )
    assert checked == []
    assert [p.name for p in loaded.data_dir.parent.iterdir()] == ["main"]  # nothing moved aside


def test_main_restore_scratch_port_defaults_to_config(
    monkeypatch: pytest.MonkeyPatch, loaded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """restore --scratch without --port uses the configured scratch port and the set's args."""
    monkeypatch.setattr(
        restore, "verify_set", lambda c, label, refs=(): {"ok": True, "seconds": 1.0}
    )
    calls: list[tuple[list[str], int]] = []

    def scratch(c: Config, args: list[str], *, port: int, keep: bool) -> dict[str, Any]:
        calls.append((args, port))
        return {"port": port}

    monkeypatch.setattr(restore, "scratch_restore", scratch)
    archived: list[str] = []
    monkeypatch.setattr(restore, "archive_now", lambda c: archived.append("check") or True)
    rc, result, _ = run_main(capsys, "restore", "--set", FULL, "--scratch")
    assert rc == 0
    args = [
        f"--set={FULL}",
        "--type=immediate",
        "--target-action=promote",
    ]
    assert calls == [(args, 5433)]
    assert archived == ["check"]  # the archive brought up to now before the restore
    assert result["connect"].endswith("-p 5433 -d slipway")


def test_main_check_target_refuses_a_damaged_set(
    monkeypatch: pytest.MonkeyPatch, cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-target --time picks the set and runs pgbackrest verify on it; the failure output
    pgBackRest 2.45 printed (exit 0) makes the command exit 1 with that output."""
    monkeypatch.setattr(Config, "load", lambda *a: cfg)
    fake = FakeRun({"info": (0, json.dumps(INFO), ""), "verify": (0, VERIFY_BAD, "")})
    monkeypatch.setattr(common, "run", fake)
    rc, result, _ = run_main(capsys, "check-target", "--time", "2026-12-02 11:00:00+00")
    assert rc == 1
    assert result["target"] == {
        "kind": "time",
        "set": FULL,
        "time": "2026-12-02T11:00:00.000000+00:00",
    }
    assert result["verify"]["ok"] is False
    assert f"backup {FULL} is invalid" in result["error"]
    assert result["error"].endswith("-- pick another with --set (slipway-backup list)")
    assert fake.calls[-1][2:] == ["verify", f"--set={FULL}", "--output=text", "--verbose"]


def test_main_check_target_passes(
    monkeypatch: pytest.MonkeyPatch, cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """With pgbackrest verify's ok output check-target exits 0 and names the set."""
    monkeypatch.setattr(Config, "load", lambda *a: cfg)
    monkeypatch.setattr(
        common, "run", FakeRun({"info": (0, json.dumps(INFO), ""), "verify": (0, VERIFY_OK, "")})
    )
    rc, result, _ = run_main(capsys, "check-target", "--latest")
    assert (rc, result["ok"], result["backup"]["label"]) == (0, True, DIFF)


def test_exclusive_lock(cfg: Config) -> None:
    """While one command holds the host's lock a second is refused with a clear sentence;
    after the first ends the lock can be taken again."""
    with cli.exclusive(cfg):
        with pytest.raises(BackupError) as exc, cli.exclusive(cfg):
            pass
        assert (
            str(exc.value) == "another slipway-backup command is running on this host; wait for it"
        )
    with cli.exclusive(cfg):
        assert (cfg.state_dir / "lock").exists()


def test_main_locked_commands_wait_for_the_lock(
    monkeypatch: pytest.MonkeyPatch, loaded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command that changes things (drop-scratch) is refused while the lock is held; a
    read-only one (list) still runs."""
    with cli.exclusive(loaded):
        rc, result, _ = run_main(capsys, "drop-scratch")
        assert (rc, result["error"]) == (
            1,
            "another slipway-backup command is running on this host; wait for it",
        )
        rc, result, _ = run_main(capsys, "list")
        assert (rc, [b["label"] for b in result["backups"]][:2]) == (0, [FULL, DIFF])
    rc, result, _ = run_main(capsys, "drop-scratch")
    assert (rc, result) == (0, {"ok": True, "removed": False, "path": str(loaded.scratch_dir)})


def test_wait_promoted_fails_at_once_when_postgres_is_gone(tmp_path: Path) -> None:
    """A recovery that stopped (no postmaster.pid) fails the wait at once with the log's end,
    instead of polling until the deadline."""
    log = tmp_path / "startup.log"
    log.write_text("FATAL:  recovery ended before configured recovery target was reached\n")
    started = time.monotonic()
    with pytest.raises(BackupError, match=r"stopped during recovery: .*recovery target"):
        verify.wait_promoted(
            None,  # type: ignore[arg-type]  # never reaches psql
            port=5433,
            host=None,
            data_dir=tmp_path,
            log_file=log,
            deadline_s=3600,
        )
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("last_ok", "asked", "taken"),
    [
        (False, "diff", "full"),
        (True, "diff", "diff"),
        (None, "incr", "incr"),
        (False, "full", "full"),
    ],
)
def test_backup_after_a_failed_verification_is_a_full(
    monkeypatch: pytest.MonkeyPatch,
    loaded: Config,
    capsys: pytest.CaptureFixture[str],
    last_ok: bool | None,
    asked: str,
    taken: str,
) -> None:
    """A diff or incr stands on earlier backups: after a failed verification it is taken as
    a full (and says so); the verification of the new backup is recorded, metrics written."""
    if last_ok is not None:
        metrics.State(loaded).record("verify", {"ok": last_ok, "finished": NOW, "set": FULL})
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(cli, "pgbackrest", lambda c, *args, **kw: ran.append(args))
    monkeypatch.setattr(cli, "verify", lambda c, label: {"ok": True, "set": label, "seconds": 2.0})
    monkeypatch.setattr(cli, "write_metrics", lambda c, s: "/metrics.prom")
    rc, result, _ = run_main(capsys, "backup", "--type", asked)
    assert rc == 0, result
    assert ran == [("backup", f"--type={taken}")]
    assert result["type"] == taken
    assert ("promoted" in result) == (taken != asked)
    assert metrics.State(loaded).data["verify"]["ok"] is True
    assert metrics.State(loaded).data[f"backup_{taken}"]["ok"] is True


def test_psql_script_goes_on_stdin(monkeypatch: pytest.MonkeyPatch, cfg: Config) -> None:
    """A psql script (several statements in one transaction) is given on stdin, not -c, and
    every statement's rows come back."""
    seen: list[tuple[list[str], str | None, dict[str, str] | None]] = []

    def fake(argv: Any, *, env: Any = None, stdin: str | None = None, **_: Any) -> Any:
        seen.append((list(argv), stdin, env))
        return subprocess.CompletedProcess(argv, 0, "a\t1\t2\nrestore point\t0/1\t\n", "")

    monkeypatch.setattr(common, "run", fake)
    rows = common.psql(cfg, "BEGIN;\nSELECT 1;\nCOMMIT;\n", options="-c x=1", script=True)
    assert rows == [["a", "1", "2"], ["restore point", "0/1", ""]]
    argv, stdin, env = seen[0]
    assert "-c" not in argv and stdin == "BEGIN;\nSELECT 1;\nCOMMIT;\n"
    assert env == {"PGOPTIONS": "-c x=1"}
