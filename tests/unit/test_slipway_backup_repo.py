"""Unit tests for the backup tool's settings and repository logic (roles/postgresql_backup/files/
slipway_backup: common.Config, repo.parse_info, parse_time, choose_target, Target, verify_set).
No command runs: subprocess.run is refused, and pgBackRest's answers are fixtures written the
way pgBackRest 2.45 prints them. test_slipway_backup_run.py imports the fixtures below."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pytest
from ansible.plugins.filter.core import to_bool, to_nice_json
from slipway_backup import common, repo
from slipway_backup.common import BackupError, Config
from slipway_backup.repo import Backup

from tests.conftest import REPO

FULL = "20261202-101500F"
DIFF = "20261202-101500F_20261202-111500D"
INCR = "20261202-101500F_20261202-121500I"  # errored: pgBackRest marks it, restores skip it


def _backup(label: str, kind: str, start: int, stop: int, size: int, delta: int, lsn: str) -> Any:
    prior = None if kind == "full" else FULL
    return {
        "annotation": None,
        "archive": {"start": "000000010000000000000003", "stop": "000000010000000000000003"},
        "backrest": {"format": 5, "version": "2.45"},
        "database": {"id": 1, "repo-key": 1},
        "error": kind == "incr",
        "info": {
            "delta": size if kind == "full" else 1048576,
            "repository": {"delta": delta, "size": delta},
            "size": size,
        },
        "label": label,
        "link": None,
        "lsn": {"start": "0/3000028", "stop": lsn},
        "prior": prior,
        "reference": [FULL] if prior else None,
        "tablespace": None,
        "timestamp": {"start": start, "stop": stop},
        "type": kind,
    }


# `pgbackrest --stanza=slipway info --output=json`: a full, a diff and an errored incr backup.
INFO: list[dict[str, Any]] = [
    {
        "archive": [
            {
                "database": {"id": 1, "repo-key": 1},
                "id": "15-1",
                "max": "000000010000000000000009",
                "min": "000000010000000000000001",
            }
        ],
        "backup": [
            _backup(FULL, "full", 1796206500, 1796206572, 31523613, 4088323, "0/3000138"),
            _backup(DIFF, "diff", 1796210100, 1796210131, 31621917, 262144, "0/5000100"),
            _backup(INCR, "incr", 1796213700, 1796213709, 31650589, 98304, "0/7000100"),
        ],
        "cipher": "aes-256-cbc",
        "db": [{"id": 1, "repo-key": 1, "system-id": 7312345678901234567, "version": "15"}],
        "name": "slipway",
        "repo": [{"cipher": "aes-256-cbc", "key": 1, "status": {"code": 0, "message": "ok"}}],
        "status": {
            "code": 0,
            "lock": {"backup": {"held": False}, "restore": {"held": False}},
            "message": "ok",
        },
    }
]
# `pgbackrest verify --set=... --output=text --verbose` as pgBackRest 2.45 printed it here
# (it reports every backup of the repository, whatever --set says).
WAL_OK = (
    "  archiveId: 15-1, total WAL checked: 8, total valid WAL: 8\n"
    "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
)


def verify_line(label: str, valid: bool) -> str:
    files = "total files checked: 1275, total valid files: " + ("1275" if valid else "1274")
    counts = "missing: 0, checksum invalid: " + ("0" if valid else "1")
    status = "valid" if valid else "invalid"
    return (
        f"  backup: {label}, status: {status}, {files}\n    {counts}, size invalid: 0, other: 0\n"
    )


VERIFY_OK = (
    "stanza: slipway\nstatus: ok\n" + WAL_OK + verify_line(FULL, True) + verify_line(DIFF, True)
)
# The full backup damaged: it and the diff that references it are invalid.
VERIFY_BAD = (
    "stanza: slipway\nstatus: error\n"
    + WAL_OK
    + verify_line(FULL, False)
    + verify_line(DIFF, False)
)
# An older full damaged, the set asked about (a newer full) intact: the top status says error.
NEWER = "20261202-131500F"
VERIFY_OLDER_BAD = (
    "stanza: slipway\nstatus: error\n"
    + WAL_OK
    + verify_line(FULL, False)
    + verify_line(NEWER, True)
)
VERIFY_WAL_BAD = (
    "stanza: slipway\nstatus: error\n"
    "  archiveId: 15-1, total WAL checked: 8, total valid WAL: 7\n"
    "    missing: 0, checksum invalid: 1, size invalid: 0, other: 0\n" + verify_line(FULL, True)
)


def config(tmp_path: Path, **overrides: Any) -> Config:
    """A Config whose directories are all under tmp_path."""
    values: dict[str, Any] = {
        "stanza": "slipway",
        "pg_version": "15",
        "pg_port": 5432,
        "data_dir": tmp_path / "15" / "main",
        "bin_dir": tmp_path / "bin",
        "unit": "postgresql@15-main",
        "database": "slipway",
        "state_dir": tmp_path / "state",
        "metrics_path": tmp_path / "textfile" / "slipway_backup.prom",
        "scratch_dir": tmp_path / "scratch",
        "scratch_port": 5433,
        **overrides,
    }
    return Config(**values)


def found() -> list[Backup]:
    backups, _ = repo.parse_info(copy.deepcopy(INFO), "slipway")
    return backups


class FakeRun:
    """Stands in for common.run: records each argv and answers by the pgBackRest command."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: Sequence[str], *, check: bool = True, **_: Any
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        command = next(a for a in argv[1:] if not a.startswith("-"))
        rc, out, err = self.answers[command]
        if check and rc:
            raise BackupError(f"`{' '.join(argv)}` failed (exit {rc}): {err}")
        return subprocess.CompletedProcess(list(argv), rc, out, err)


@pytest.fixture(autouse=True)
def _no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a unit test tried to run {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "run", refuse)


# --- common.Config.load -------------------------------------------------------------------


def render_role_config(dump: bool) -> str:
    """roles/postgresql_backup/templates/slipway-backup.json.j2 rendered with the role's
    defaults and Ansible's own to_nice_json and bool filters."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update(to_nice_json=to_nice_json, bool=to_bool)
    template = REPO / "roles/postgresql_backup/templates/slipway-backup.json.j2"
    return env.from_string(template.read_text()).render(
        postgresql_backup_stanza="slipway",
        postgresql_version=15,
        postgresql_port=5432,
        _postgresql_backup_data_dir="/var/lib/postgresql/15/main",
        _postgresql_backup_bin_dir="/usr/lib/postgresql/15/bin",
        _postgresql_backup_unit="postgresql@15-main",
        postgresql_app_db_name="slipway",
        postgresql_backup_metrics_dir="/var/lib/prometheus/node-exporter",
        postgresql_backup_scratch_dir="/var/lib/postgresql/slipway-scratch",
        postgresql_backup_scratch_port=5433,
        postgresql_backup_verify_tables=["public.jobs", "public.alembic_version"],
        postgresql_backup_verify_restore=True,
        postgresql_backup_verify_lock_timeout=10,
        postgresql_backup_dump_enabled=dump,
        postgresql_backup_dump_dir="/var/backups/slipway",
        postgresql_backup_dump_keep=7,
        postgresql_backup_process_max="2",  # the default is a template: a string
    )


def test_config_load_reads_what_the_role_writes(tmp_path: Path) -> None:
    """The file the role's template writes loads into a Config with paths, ints and a tuple."""
    path = tmp_path / "slipway-backup.json"
    path.write_text(render_role_config(dump=False))
    assert Config.load(path) == Config(
        stanza="slipway",
        pg_version="15",
        pg_port=5432,
        data_dir=Path("/var/lib/postgresql/15/main"),
        bin_dir=Path("/usr/lib/postgresql/15/bin"),
        unit="postgresql@15-main",
        database="slipway",
        state_dir=Path("/var/lib/slipway-backup"),
        metrics_path=Path("/var/lib/prometheus/node-exporter/slipway_backup.prom"),
        scratch_dir=Path("/var/lib/postgresql/slipway-scratch"),
        scratch_port=5433,
        verify_tables=("public.jobs", "public.alembic_version"),
        verify_restore=True,
        verify_lock_timeout_s=10,
        dump_dir=None,
        dump_keep=7,
        process_max=2,
    )


def test_config_load_dump_dir_when_exports_are_on(tmp_path: Path) -> None:
    """With dumps enabled dump_dir is a Path; an empty verify_tables list is an empty tuple."""
    raw = json.loads(render_role_config(dump=True))
    raw["verify_tables"] = []
    path = tmp_path / "slipway-backup.json"
    path.write_text(json.dumps(raw))
    cfg = Config.load(path)
    assert cfg.dump_dir == Path("/var/backups/slipway")
    assert cfg.verify_tables == ()


@pytest.mark.parametrize("text", [None, "{not json", ""])
def test_config_load_refuses_missing_or_broken_file(tmp_path: Path, text: str | None) -> None:
    """A missing or unreadable file is a BackupError naming the file and the fix."""
    path = tmp_path / "slipway-backup.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(BackupError, match=r"cannot read .*slipway-backup\.json: ") as exc:
        Config.load(path)
    assert str(exc.value).endswith("; converge the postgresql_backup role")


# --- repo.parse_info ----------------------------------------------------------------------


def test_parse_info_reads_backups_and_archive_range() -> None:
    """Every field comes from its place in pgBackRest's JSON; backups are oldest first."""
    doc = copy.deepcopy(INFO)
    doc[0]["backup"].reverse()  # the order pgBackRest lists them in does not matter
    backups, wal = repo.parse_info(doc, "slipway")
    assert [b.label for b in backups] == [FULL, DIFF, INCR]
    assert backups[0] == Backup(
        label=FULL,
        type="full",
        start=1796206500.0,
        stop=1796206572.0,
        size=4088323,
        database_size=31523613,
        lsn_stop="0/3000138",
        error=False,
    )
    assert (backups[1].type, backups[1].size, backups[1].lsn_stop) == ("diff", 262144, "0/5000100")
    assert [b.error for b in backups] == [False, False, True]
    assert wal == {"min": "000000010000000000000001", "max": "000000010000000000000009"}


def test_parse_info_picks_the_named_stanza() -> None:
    """Another stanza in the same document is ignored."""
    other = copy.deepcopy(INFO[0])
    other.update(name="other", backup=[], status={"code": 2, "message": "no valid backups"})
    backups, _ = repo.parse_info([other, *copy.deepcopy(INFO)], "slipway")
    assert len(backups) == 3


def test_parse_info_no_backups_yet() -> None:
    """Status 2 (a new stanza) is no backups and no archive range, not an error."""
    doc = [{"name": "slipway", "status": {"code": 2, "message": "no valid backups"}}]
    doc[0].update(backup=[], archive=[])
    assert repo.parse_info(doc, "slipway") == ([], {"min": None, "max": None})


def test_parse_info_refuses_an_unknown_stanza() -> None:
    """A stanza pgBackRest does not list is a BackupError that names it and the fix."""
    with pytest.raises(BackupError, match="knows no stanza elsewhere; converge"):
        repo.parse_info(copy.deepcopy(INFO), "elsewhere")


def test_parse_info_refuses_a_bad_stanza_status() -> None:
    """Status 1 (missing stanza path) is a BackupError with pgBackRest's own message."""
    doc = [{"name": "slipway", "status": {"code": 1, "message": "missing stanza path"}}]
    with pytest.raises(BackupError, match=r"^stanza slipway: missing stanza path$"):
        repo.parse_info(doc, "slipway")


def test_backups_runs_pgbackrest_info(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """repo.backups asks pgBackRest for the configured stanza's info as JSON."""
    fake = FakeRun({"info": (0, json.dumps(INFO), "")})
    monkeypatch.setattr(common, "run", fake)
    backups, wal = repo.backups(config(tmp_path))
    assert fake.calls == [["pgbackrest", "--stanza=slipway", "info", "--output=json"]]
    assert [b.label for b in backups] == [FULL, DIFF, INCR]
    assert wal["max"] == "000000010000000000000009"


def test_backup_as_dict() -> None:
    """The listing shows UTC times, the duration and both sizes."""
    assert found()[0].as_dict() == {
        "label": FULL,
        "type": "full",
        "start": "2026-12-02T10:15:00+00:00",
        "stop": "2026-12-02T10:16:12+00:00",
        "seconds": 72.0,
        "repo_bytes": 4088323,
        "database_bytes": 31523613,
        "lsn_stop": "0/3000138",
        "error": False,
    }


# --- repo.parse_time ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-02 10:15:00+00", 1796206500.0),
        ("2026-12-02T10:15:00Z", 1796206500.0),
        (" 2026-12-02 10:15:00Z ", 1796206500.0),
        ("2026-12-02 12:15:00+02:00", 1796206500.0),
        ("2026-12-02 05:15:00-05", 1796206500.0),
        ("2026-12-02 10:15:00.250+00", 1796206500.25),
    ],
)
def test_parse_time_zones(text: str, expected: float) -> None:
    """The same instant written with +00, Z, +02:00 and -05 is the same epoch second."""
    assert repo.parse_time(text) == expected


@pytest.mark.parametrize("text", ["2026-12-02 10:15:00", "2026-12-02T10:15"])
def test_parse_time_refuses_a_time_without_zone(text: str) -> None:
    """A time with no zone is refused with the fix: the same time with +00."""
    with pytest.raises(BackupError, match="has no zone") as exc:
        repo.parse_time(text)
    assert f"'{text}+00' for UTC" in str(exc.value)


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-02 10:15:00+00", "10:15+00"])
def test_parse_time_refuses_garbage(text: str) -> None:
    """Text that is not an ISO 8601 date and time is refused with an example of one."""
    with pytest.raises(BackupError, match=r"time .*: write it as '2026-12-02 10:15:00\+00'"):
        repo.parse_time(text)


def test_parse_time_refuses_a_date_alone() -> None:
    """A date without a time of day is refused (its day is not read as a zone '-02')."""
    with pytest.raises(BackupError, match="has no time of day"):
        repo.parse_time("2026-12-02")
    with pytest.raises(BackupError, match="has no time of day"):
        repo.parse_time("2026-12-02+00")


# --- repo.choose_target and Target --------------------------------------------------------

AT = 1796220000.0  # "now" for the tests: after every backup in INFO


def test_choose_latest_skips_errored_backups() -> None:
    """--latest starts from the newest good backup and replays all WAL (no --type)."""
    target = repo.choose_target(found(), latest=True, at=AT)
    assert (target.kind, target.backup.label) == ("latest", DIFF)
    assert target.pgbackrest_args() == [f"--set={DIFF}", "--target-timeline=latest"]
    assert target.as_dict() == {"kind": "latest", "set": DIFF, "time": None}


def test_choose_named_set() -> None:
    """--set LABEL restores that backup and stops as soon as it is consistent."""
    target = repo.choose_target(found(), label=FULL)
    assert (target.kind, target.backup.label) == ("set", FULL)
    assert target.pgbackrest_args() == [
        f"--set={FULL}",
        "--type=immediate",
        "--target-action=promote",
    ]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("latest", "'latest' is not a pgBackRest backup label"),
        ("20261202-101500D", "is not a pgBackRest backup label"),
        ("20261201-011500F", "there is no backup 20261201-011500F"),
        (INCR, f"there is no backup {INCR}"),  # errored: not offered
    ],
)
def test_choose_named_set_refused(label: str, message: str) -> None:
    """A malformed, unknown or errored label is refused, pointing at `slipway-backup list`."""
    with pytest.raises(BackupError, match=message) as exc:
        repo.choose_target(found(), label=label)
    assert "slipway-backup list" in str(exc.value)


@pytest.mark.parametrize(
    ("when", "label"),
    [
        (1796206572.0, FULL),  # the moment the full backup finished
        (1796210000.0, FULL),  # between the full and the diff
        (1796210131.0, DIFF),  # the moment the diff finished
        (1796215000.0, DIFF),  # after the errored incr: it is skipped
    ],
)
def test_choose_time_picks_newest_backup_finished_before(when: float, label: str) -> None:
    """--time starts from the newest good backup that finished at or before that time."""
    target = repo.choose_target(found(), when=when, at=AT)
    assert (target.kind, target.backup.label, target.time) == ("time", label, when)


def test_choose_time_before_oldest_backup() -> None:
    """A time before the oldest backup finished cannot be reached, and the message says why."""
    with pytest.raises(BackupError) as exc:
        repo.choose_target(found(), when=1796206571.0, at=AT)
    assert str(exc.value) == (
        "2026-12-02T10:16:11+00:00 is before the oldest backup finished "
        "(2026-12-02T10:16:12+00:00): no backup can reach it"
    )


def test_choose_time_in_the_future() -> None:
    """A time after now is refused."""
    with pytest.raises(BackupError, match=r"^2026-12-02T14:01:00\+00:00 is in the future$"):
        repo.choose_target(found(), when=AT + 60, at=AT)


def test_choose_refuses_without_usable_backups_or_a_choice() -> None:
    """No good backup, or nothing asked for, is a sentence saying what to do."""
    only_errored = [b for b in found() if b.error]
    with pytest.raises(BackupError, match="no usable backup yet: run `slipway-backup backup"):
        repo.choose_target(only_errored, latest=True)
    with pytest.raises(BackupError, match="--latest, --set LABEL or --time TIME"):
        repo.choose_target(found())


def test_time_target_args_keep_microseconds() -> None:
    """A time target replays WAL to the exact microsecond and then promotes."""
    when = 1796212000.123456
    target = repo.choose_target(found(), when=when, at=AT)
    assert target.pgbackrest_args() == [
        f"--set={DIFF}",
        "--target-timeline=latest",
        "--type=time",
        "--target=2026-12-02T11:46:40.123456+00:00",
        "--target-action=promote",
    ]
    assert target.as_dict()["time"] == "2026-12-02T11:46:40.123456+00:00"


# --- repo.verify_set ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "out", "err", "label", "references", "problems"),
    [
        (0, VERIFY_OK, "", DIFF, [FULL], []),
        # pgBackRest 2.45 exits 0 here: the text decides.
        (0, VERIFY_BAD, "", FULL, [], [f"backup {FULL} is invalid"]),
        (
            0,
            VERIFY_BAD,
            "",
            DIFF,
            [FULL],
            [f"backup {FULL} is invalid", f"backup {DIFF} is invalid"],
        ),
        (0, VERIFY_OLDER_BAD, "", NEWER, [], []),
        (0, VERIFY_WAL_BAD, "", FULL, [], ["1 of 8 WAL segments of 15-1 are invalid"]),
        (
            82,
            "",
            f"ERROR: [082]: backup set {FULL} is not valid",
            FULL,
            [],
            ["pgbackrest verify exited 82", f"pgbackrest verify did not report backup {FULL}"],
        ),
    ],
)
def test_verify_set(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rc: int,
    out: str,
    err: str,
    label: str,
    references: list[str],
    problems: list[str],
) -> None:
    """A set passes only when pgbackrest verify exits 0 and its own line and those of the
    backups it references say valid, with no invalid WAL; other backups' damage does not
    count against it. Its output is kept either way."""
    fake = FakeRun({"verify": (rc, out, err)})
    monkeypatch.setattr(common, "run", fake)
    clock = iter([1000.0, 1012.34])
    monkeypatch.setattr(repo, "now", lambda: next(clock))
    result = repo.verify_set(config(tmp_path), label, references)
    assert fake.calls == [
        ["pgbackrest", "--stanza=slipway", "verify", f"--set={label}", "--output=text", "--verbose"]
    ]
    assert result == {
        "set": label,
        "ok": not problems,
        "problems": problems,
        "seconds": 12.3,
        "output": (out + err).strip(),
    }
