#!/usr/bin/python3
"""slipway-backup: pgBackRest backups that are proven by a restore, and restores that an
operator can trust. Installed on the db host by the postgresql_backup role as
/usr/local/sbin/slipway-backup; runs as root and runs pgBackRest, psql and pg_ctl as postgres.

    slipway-backup backup --type full|diff|incr [--no-verify]   # back up, verify, restore-test
    slipway-backup verify [--set LABEL]                         # verify + scratch restore test
    slipway-backup list                                         # backups and recovery window
    slipway-backup check-target (--latest | --set LABEL | --time TIME)
    slipway-backup restore (--latest | --set LABEL | --time TIME) (--live --confirm | --scratch)
    slipway-backup drop-scratch
    slipway-backup dump                                         # optional pg_dump export
    slipway-backup metrics                                      # textfile for node_exporter

Every command prints one JSON object on stdout (progress goes to stderr) and exits 0 on
success, 1 on failure, 2 on bad input. Settings come from /etc/slipway-backup.json, written by
the role. Python 3.11 standard library only (Debian bookworm's python3).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG_PATH = Path(os.environ.get("SLIPWAY_BACKUP_CONFIG", "/etc/slipway-backup.json"))
BACKUP_TYPES = ("full", "diff", "incr")
# pgBackRest's backup labels: 20261202-101500F, 20261202-101500F_20261202-111500D (or I).
LABEL_RE = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
# Settings for a checksum session: the same text for a row on both clusters.
CHECKSUM_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c IntervalStyle=iso_8601"


class BackupError(Exception):
    """A failure to report to the operator: the message says what failed and what to do."""


@dataclass(frozen=True)
class Config:
    stanza: str
    pg_version: str
    pg_port: int
    data_dir: Path
    bin_dir: Path
    unit: str
    database: str
    state_dir: Path
    metrics_path: Path
    scratch_dir: Path
    scratch_port: int
    verify_tables: tuple[str, ...] = ()
    verify_restore: bool = True
    verify_lock_timeout_s: int = 10
    dump_dir: Path | None = None
    dump_keep: int = 7
    process_max: int = 2

    @classmethod
    def load(cls, path: Path = CONFIG_PATH) -> Config:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BackupError(f"cannot read {path}: {exc}; converge the postgresql_backup role") from exc
        paths = ("data_dir", "bin_dir", "state_dir", "metrics_path", "scratch_dir")
        for key in paths:
            raw[key] = Path(raw[key])
        raw["dump_dir"] = Path(raw["dump_dir"]) if raw.get("dump_dir") else None
        raw["verify_tables"] = tuple(raw.get("verify_tables") or ())
        return cls(**raw)


def log(message: str) -> None:
    print(f"slipway-backup: {message}", file=sys.stderr, flush=True)


def now() -> float:
    return time.time()


def iso(ts: float, timespec: str = "seconds") -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec)


# --- Running things as postgres -------------------------------------------------------------


def run(argv: Sequence[str], *, user: str | None = "postgres", check: bool = True,
        env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run argv (as `user` through runuser); raise BackupError with its output on failure."""
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, check=False, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd="/")  # fmt: skip
    if check and proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise BackupError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {said}")
    return proc


def pgbackrest(cfg: Config, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["pgbackrest", f"--stanza={cfg.stanza}", *args], check=check)


def psql(cfg: Config, sql: str, *, database: str | None = None, port: int | None = None,
         host: str | None = None, options: str | None = None) -> list[list[str]]:  # fmt: skip
    """Rows of a query (tab-separated fields), as postgres over the Unix socket."""
    argv = ["psql", "-X", "-A", "-t", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1",
            "-p", str(port or cfg.pg_port), "-d", database or cfg.database]  # fmt: skip
    if host:
        argv += ["-h", host]
    proc = run([*argv, "-c", sql], env={"PGOPTIONS": options} if options else None)
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


# --- Backups: info ------------------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    label: str
    type: str
    start: float
    stop: float
    size: int  # bytes in the repository (compressed)
    database_size: int  # bytes of the cluster it copied
    lsn_stop: str
    error: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "type": self.type, "start": iso(self.start),
                "stop": iso(self.stop), "seconds": round(self.stop - self.start, 1),
                "repo_bytes": self.size, "database_bytes": self.database_size,
                "lsn_stop": self.lsn_stop, "error": self.error}  # fmt: skip


def parse_info(info: list[dict[str, Any]], stanza: str) -> tuple[list[Backup], dict[str, Any]]:
    """The stanza's backups (oldest first) and its archive range from `pgbackrest info
    --output=json`."""
    for entry in info:
        if entry.get("name") != stanza:
            continue
        status = entry.get("status", {})
        if status.get("code") not in (0, 2):  # 2: no backups yet
            raise BackupError(f"stanza {stanza}: {status.get('message', 'unknown status')}")
        backups = [
            Backup(
                label=b["label"],
                type=b["type"],
                start=float(b["timestamp"]["start"]),
                stop=float(b["timestamp"]["stop"]),
                size=int(b["info"]["repository"]["delta"]),
                database_size=int(b["info"]["size"]),
                lsn_stop=(b.get("lsn") or {}).get("stop", ""),
                error=bool(b.get("error", False)),
            )
            for b in entry.get("backup", [])
        ]
        archives = entry.get("archive", [])
        wal = {"min": archives[0].get("min") if archives else None,
               "max": archives[-1].get("max") if archives else None}  # fmt: skip
        return sorted(backups, key=lambda b: b.stop), wal
    raise BackupError(f"pgBackRest knows no stanza {stanza}; converge the postgresql_backup role")


def backups(cfg: Config) -> tuple[list[Backup], dict[str, Any]]:
    out = pgbackrest(cfg, "info", "--output=json").stdout
    return parse_info(json.loads(out), cfg.stanza)


def parse_time(text: str) -> float:
    """A point in time as an operator writes it: ISO 8601 with a zone ('2026-12-02 10:15:00+00',
    '2026-12-02T10:15:00Z'). A time without a zone is refused: it would be read in the
    server's zone and the operator may mean another."""
    cleaned = text.strip().replace("Z", "+00:00")
    if re.search(r"[+-]\d\d$", cleaned):
        cleaned += ":00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError as exc:
        raise BackupError(f"cannot read the time {text!r}: write it as '2026-12-02 10:15:00+00'") from exc
    if moment.tzinfo is None:
        raise BackupError(f"the time {text!r} has no zone: add one, e.g. '{text}+00' for UTC")
    return moment.timestamp()


@dataclass(frozen=True)
class Target:
    """What a restore goes back to: the backup set it starts from and how far WAL replays."""

    kind: str  # latest | set | time
    backup: Backup
    time: float | None = None

    def pgbackrest_args(self) -> list[str]:
        args = [f"--set={self.backup.label}"]
        if self.kind == "time":
            assert self.time is not None
            args += ["--type=time", f"--target={iso(self.time, 'microseconds')}",
                     "--target-action=promote"]
        elif self.kind == "set":
            args += ["--type=immediate", "--target-action=promote"]
        # latest: the default type replays every archived WAL segment, then promotes.
        return args

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "set": self.backup.label,
                "time": iso(self.time, "microseconds") if self.time is not None else None}  # fmt: skip


def choose_target(found: list[Backup], *, latest: bool = False, label: str | None = None,
                  when: float | None = None, at: float | None = None) -> Target:  # fmt: skip
    """The backup a restore starts from: the newest good one, the named one, or the newest
    that finished before the time asked for. Refused with a reason an operator can act on."""
    good = [b for b in found if not b.error]
    if not good:
        raise BackupError("there is no usable backup yet: run `slipway-backup backup --type full`")
    if label is not None:
        if not LABEL_RE.match(label):
            raise BackupError(f"{label!r} is not a pgBackRest backup label (see `slipway-backup list`)")
        named = [b for b in good if b.label == label]
        if not named:
            raise BackupError(f"there is no backup {label}; `slipway-backup list` names them")
        return Target("set", named[0])
    if when is not None:
        before = [b for b in good if b.stop <= when]
        if not before:
            raise BackupError(
                f"{iso(when)} is before the oldest backup finished ({iso(good[0].stop)}): "
                "no backup can reach it")
        if when > (at if at is not None else now()):
            raise BackupError(f"{iso(when)} is in the future")
        return Target("time", before[-1], when)
    if latest:
        return Target("latest", good[-1])
    raise BackupError("say what to restore: --latest, --set LABEL or --time TIME")


def verify_set(cfg: Config, label: str) -> dict[str, Any]:
    """`pgbackrest verify` for one backup set and the WAL it needs: every file's checksum in
    the repository. pgBackRest exits 0 even when it finds errors in some versions, so the
    text output is read as well."""
    started = now()
    proc = pgbackrest(cfg, "verify", f"--set={label}", "--output=text", check=False)
    said = (proc.stdout + proc.stderr).strip()
    bad = proc.returncode != 0 or bool(re.search(r"(invalid|missing|error)", proc.stdout, re.I))
    return {"set": label, "ok": not bad, "seconds": round(now() - started, 1),
            "output": said[-3000:]}  # fmt: skip


# --- Verification by a scratch restore ------------------------------------------------------


def tables(cfg: Config, *, port: int | None = None, host: str | None = None) -> list[str]:
    if cfg.verify_tables:
        return list(cfg.verify_tables)
    rows = psql(cfg, "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                     "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
                     "ORDER BY 1", port=port, host=host)  # fmt: skip
    return [r[0] for r in rows]


def checksum_sql(names: Sequence[str]) -> str:
    """One row per table: name, row count, and an order-free sum of 60-bit row hashes (a full
    scan; constant memory, however large the table)."""
    parts = [
        f"SELECT '{name}', count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)"
        f"::bigint), 0) FROM {name} t"
        for name in names
    ]
    return " UNION ALL ".join(parts)


def live_point(cfg: Config, name: str) -> dict[str, list[str]]:
    """Checksums of the chosen tables on the live database, taken together with a named
    restore point: in one transaction the tables are locked in SHARE mode (writers to them
    wait, readers do not; in-flight writers finish first), summed, and the restore point
    written before the lock is released. So the rows the sums saw are exactly the rows a
    recovery to that restore point has. Then the WAL is switched so the point gets archived."""
    names = tables(cfg)
    if not names:
        return {}
    script = (
        f"SET lock_timeout = '{cfg.verify_lock_timeout_s}s';\n"
        "BEGIN;\n"
        f"LOCK TABLE {', '.join(names)} IN SHARE MODE;\n"
        f"{checksum_sql(names)};\n"
        f"SELECT 'restore point', pg_create_restore_point('{name}'), '';\n"
        "COMMIT;\n"
    )
    argv = ["psql", "-X", "-A", "-t", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1",
            "-p", str(cfg.pg_port), "-d", cfg.database]  # fmt: skip
    try:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], input=script,
                              capture_output=True, text=True, check=False, cwd="/",
                              env={**os.environ, "PGOPTIONS": CHECKSUM_OPTIONS})  # fmt: skip
    except OSError as exc:
        raise BackupError(f"cannot run psql: {exc}") from exc
    if proc.returncode != 0:
        raise BackupError(
            f"could not take the verification point on the live database: {proc.stderr.strip()} "
            f"(the tables stayed locked at most {cfg.verify_lock_timeout_s} s; a long writer "
            "holds them: try again, or raise postgresql_backup_verify_lock_timeout)")
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line]
    pgbackrest(cfg, "check")  # switches the WAL and waits until the point is archived
    return {r[0]: r[1:] for r in rows if r[0] != "restore point"}


def write_scratch_config(cfg: Config, path: Path, port: int) -> None:
    """The restored data directory has no postgresql.conf or pg_hba.conf (Debian keeps them in
    /etc/postgresql): a small one of its own, listening on a Unix socket only."""
    run_dir = path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(run_dir, "postgres", "postgres")
    settings = {
        "port": str(port), "listen_addresses": "''", "unix_socket_directories": f"'{run_dir}'",
        "shared_buffers": "'64MB'", "max_connections": "20", "archive_mode": "off",
        "ssl": "off", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "logging_collector": "off", "log_destination": "'stderr'", "hot_standby": "off",
    }  # fmt: skip
    (path / "postgresql.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    (path / "pg_hba.conf").write_text("local all postgres peer\n")
    (path / "pg_ident.conf").write_text("")
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        shutil.chown(path / name, "postgres", "postgres")


def pg_ctl(cfg: Config, path: Path, *args: str, timeout: float = 3600) -> None:
    run([str(cfg.bin_dir / "pg_ctl"), "-D", str(path), *args], timeout=timeout)


def wait_promoted(cfg: Config, *, port: int, host: str | None, deadline_s: float) -> None:
    """Wait until the cluster on port has finished recovery and accepts writes."""
    limit = now() + deadline_s
    while True:
        try:
            rows = psql(cfg, "SELECT pg_is_in_recovery()", database="postgres", port=port, host=host)
            if rows and rows[0][0] == "f":
                return
        except BackupError:
            pass
        if now() > limit:
            raise BackupError(f"the cluster on port {port} was still in recovery after {deadline_s:.0f} s")
        time.sleep(0.5)


def scratch_restore(cfg: Config, target_args: list[str], *, port: int, keep: bool,
                    path: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Restore into a throwaway cluster beside the live one and start it on `port`."""
    path = path or cfg.scratch_dir
    if path.exists():
        if (path / "postmaster.pid").exists():
            with contextlib.suppress(BackupError):
                pg_ctl(cfg, path, "stop", "-m", "immediate", timeout=60)
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    shutil.chown(path, "postgres", "postgres")
    started = now()
    pgbackrest(cfg, "restore", f"--pg1-path={path}", "--archive-mode=off",
               f"--process-max={cfg.process_max}", *target_args)  # fmt: skip
    write_scratch_config(cfg, path, port)
    restored = now()
    try:
        pg_ctl(cfg, path, "start", "-w", "-t", "3600", "-l", str(path / "startup.log"))
    except BackupError as exc:
        said = (path / "startup.log").read_text(errors="replace") if (path / "startup.log").exists() else ""
        raise BackupError(f"the restored cluster did not start: {said[-1500:]}") from exc
    wait_promoted(cfg, port=port, host=str(path / "run"), deadline_s=3600)
    return {"path": str(path), "port": port, "socket_dir": str(path / "run"),
            "restore_seconds": round(restored - started, 1),
            "recovery_seconds": round(now() - restored, 1), "kept": keep}  # fmt: skip


def drop_scratch(cfg: Config, path: Path | None = None) -> bool:
    path = path or cfg.scratch_dir
    if not path.exists():
        return False
    if (path / "postmaster.pid").exists():
        with contextlib.suppress(BackupError):
            pg_ctl(cfg, path, "stop", "-m", "fast", timeout=120)
    shutil.rmtree(path)
    return True


def compare(live: dict[str, list[str]], restored: dict[str, list[str]]) -> list[str]:
    """Differences between two sets of table checksums, as sentences (empty: identical)."""
    problems = []
    for name in sorted(set(live) | set(restored)):
        a, b = live.get(name), restored.get(name)
        if a is None or b is None:
            problems.append(f"{name} is only in the {'restored' if a is None else 'live'} database")
        elif a[0] != b[0]:
            problems.append(f"{name}: {a[0]} rows live, {b[0]} restored")
        elif a[1] != b[1]:
            problems.append(f"{name}: same {a[0]} rows but different contents")
    return problems


def verify(cfg: Config, label: str | None = None) -> dict[str, Any]:
    """pgbackrest verify of a set, then (unless turned off) a restore of it into a scratch
    cluster, replayed to a restore point taken now, compared table by table with the live
    database at that point, and torn down."""
    found, _ = backups(cfg)
    target = choose_target(found, label=label, latest=label is None)
    result: dict[str, Any] = {"set": target.backup.label, "started": iso(now())}
    started = now()
    result["verify"] = verify_set(cfg, target.backup.label)
    if not result["verify"]["ok"]:
        result.update(ok=False, error=f"pgbackrest verify found errors in {target.backup.label}")
        return result
    if cfg.verify_restore:
        point = f"slipway-verify-{int(now())}"
        live = live_point(cfg, point)
        args = [f"--set={target.backup.label}", "--type=name", f"--target={point}",
                "--target-action=promote"]  # fmt: skip
        try:
            result["scratch"] = scratch_restore(cfg, args, port=cfg.scratch_port, keep=False)
            restored = {
                r[0]: r[1:]
                for r in psql(cfg, checksum_sql(list(live)), port=cfg.scratch_port,
                              host=str(cfg.scratch_dir / "run"), options=CHECKSUM_OPTIONS)  # fmt: skip
            } if live else {}
        finally:
            drop_scratch(cfg)
        problems = compare(live, restored)
        result["restore_point"] = point
        result["tables"] = {name: {"rows": int(v[0])} for name, v in live.items()}
        if problems:
            result.update(ok=False, error="the restored database differs: " + "; ".join(problems))
            return result
    result.update(ok=True, seconds=round(now() - started, 1))
    return result


# --- State and metrics ---------------------------------------------------------------------


class State:
    """The last result of each backup type and of verification, in state_dir/state.json."""

    def __init__(self, cfg: Config) -> None:
        self.path = cfg.state_dir / "state.json"
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def record(self, key: str, value: dict[str, Any]) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


@dataclass
class Metrics:
    lines: list[str] = field(default_factory=list)
    declared: set[str] = field(default_factory=set)

    def add(self, name: str, value: float, help_text: str, **labels: str) -> None:
        if name not in self.declared:
            self.declared.add(name)
            self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        number = format(value, ".15g")
        self.lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def archive_status(cfg: Config) -> dict[str, float]:
    """WAL waiting to be archived: segments marked .ready and the age of the oldest, and
    pg_stat_archiver's counters."""
    ready_dir = cfg.data_dir / "pg_wal" / "archive_status"
    ages = [now() - p.stat().st_mtime for p in ready_dir.glob("*.ready")] if ready_dir.is_dir() else []
    out = {"ready": float(len(ages)), "oldest_ready_age": max(ages, default=0.0)}
    rows = psql(cfg, "SELECT failed_count, coalesce(extract(epoch FROM last_archived_time), 0), "
                     "coalesce(extract(epoch FROM last_failed_time), 0) FROM pg_stat_archiver",
                database="postgres")  # fmt: skip
    if rows:
        out.update(failed=float(rows[0][0]), last_archived=float(rows[0][1]),
                   last_failed=float(rows[0][2]))  # fmt: skip
    return out


def render_metrics(cfg: Config, state: dict[str, Any], found: list[Backup] | None,
                   archive: dict[str, float] | None) -> str:  # fmt: skip
    m = Metrics()
    s = {"stanza": cfg.stanza}
    for kind in BACKUP_TYPES:
        last = state.get(f"backup_{kind}")
        if not last:
            continue
        labels = {**s, "type": kind}
        m.add("slipway_backup_last_run_timestamp_seconds", last["finished"],
              "When the last backup of this type finished (success or not).", **labels)
        m.add("slipway_backup_last_run_success", 1 if last["ok"] else 0,
              "1 if the last backup of this type and its verification succeeded.", **labels)
        ok = state.get(f"backup_{kind}_ok")
        if ok:
            m.add("slipway_backup_last_success_timestamp_seconds", ok["finished"],
                  "When the last good backup of this type finished.", **labels)
            m.add("slipway_backup_last_duration_seconds", ok["backup_seconds"],
                  "Seconds the last good backup of this type took (not its verification).", **labels)
            m.add("slipway_backup_last_size_bytes", ok["repo_bytes"],
                  "Bytes the last good backup of this type added to the repository.", **labels)
    last_verify = state.get("verify")
    if last_verify:
        m.add("slipway_backup_verify_success", 1 if last_verify["ok"] else 0,
              "1 if the last verification (pgbackrest verify and scratch restore) passed.", **s)
        m.add("slipway_backup_verify_timestamp_seconds", last_verify["finished"],
              "When the last verification finished.", **s)
    if found is not None:
        good = [b for b in found if not b.error]
        m.add("slipway_backup_repository_backups", len(good), "Usable backups in the repository.", **s)
        if good:
            m.add("slipway_backup_oldest_recovery_timestamp_seconds", good[0].stop,
                  "The earliest point a restore can reach (the oldest backup's end).", **s)
    if archive is not None:
        m.add("slipway_backup_wal_ready_segments", archive["ready"],
              "WAL segments PostgreSQL has finished but not yet archived.", **s)
        m.add("slipway_backup_wal_archive_lag_seconds", archive["oldest_ready_age"],
              "Age of the oldest WAL segment waiting to be archived (0: none waiting).", **s)
        if "failed" in archive:
            m.add("slipway_backup_wal_archive_failures", archive["failed"],
                  "archive_command failures since the statistics were reset.", **s)
            m.add("slipway_backup_wal_last_archived_timestamp_seconds", archive["last_archived"],
                  "When the last WAL segment was archived.", **s)
    m.add("slipway_backup_metrics_timestamp_seconds", now(), "When this file was written.", **s)
    return m.text()


def write_metrics(cfg: Config, state: State) -> str:
    found: list[Backup] | None
    archive: dict[str, float] | None
    try:
        found, _ = backups(cfg)
    except BackupError as exc:
        log(f"metrics without the repository: {exc}")
        found = None
    try:
        archive = archive_status(cfg)
    except BackupError as exc:
        log(f"metrics without the archiver: {exc}")
        archive = None
    text = render_metrics(cfg, state.data, found, archive)
    cfg.metrics_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.metrics_path.with_name(f".{cfg.metrics_path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(cfg.metrics_path)  # atomic: node_exporter never reads half a file
    return str(cfg.metrics_path)


# --- Commands ------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(cfg: Config) -> Iterator[None]:
    """One backup, verification or restore at a time on this host."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.state_dir / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BackupError("another slipway-backup command is running on this host; wait for it") from exc
        yield


def cmd_backup(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    state = State(cfg)
    started = now()
    result: dict[str, Any] = {"type": args.type, "started": iso(started), "ok": False}
    try:
        log(f"{args.type} backup of stanza {cfg.stanza}")
        pgbackrest(cfg, "backup", f"--type={args.type}")
        backup_done = now()
        found, _ = backups(cfg)
        newest = found[-1]
        result.update(backup=newest.as_dict(), backup_seconds=round(backup_done - started, 1),
                      repo_bytes=newest.size, repository="local")  # fmt: skip
        if args.verify:
            log(f"verifying {newest.label}")
            result["verification"] = verify(cfg, newest.label)
            state.record("verify", {"ok": result["verification"]["ok"], "finished": now(),
                                    "set": newest.label})  # fmt: skip
            if not result["verification"]["ok"]:
                raise BackupError(result["verification"]["error"])
        result["ok"] = True
    except BackupError as exc:
        result["error"] = str(exc)
    result["finished"] = now()
    result["seconds"] = round(result["finished"] - started, 1)
    state.record(f"backup_{args.type}", {k: result.get(k) for k in ("ok", "finished", "error")})
    if result["ok"]:
        state.record(f"backup_{args.type}_ok", {k: result[k] for k in ("finished", "backup_seconds", "repo_bytes")})
    result["metrics"] = write_metrics(cfg, state)
    return result


def cmd_verify(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    state = State(cfg)
    try:
        result = verify(cfg, args.set)
    except BackupError as exc:
        result = {"ok": False, "error": str(exc), "set": args.set}
    state.record("verify", {"ok": result["ok"], "finished": now(), "set": result.get("set")})
    result["metrics"] = write_metrics(cfg, state)
    return result


def cmd_list(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    found, wal = backups(cfg)
    good = [b for b in found if not b.error]
    state = State(cfg).data
    return {"ok": True, "stanza": cfg.stanza, "backups": [b.as_dict() for b in found], "wal": wal,
            "recoverable_from": iso(good[0].stop) if good else None,
            "last_verify": state.get("verify")}  # fmt: skip


def target_from(cfg: Config, args: argparse.Namespace) -> Target:
    found, _ = backups(cfg)
    when = parse_time(args.time) if args.time else None
    return choose_target(found, latest=args.latest, label=args.set, when=when)


def cmd_check_target(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """What a restore would start from, and pgbackrest verify of that set: run before any
    unit is stopped, so a damaged backup is refused while the service still runs."""
    target = target_from(cfg, args)
    checked = verify_set(cfg, target.backup.label)
    result = {"ok": checked["ok"], "target": target.as_dict(), "backup": target.backup.as_dict(),
              "verify": checked}  # fmt: skip
    if not checked["ok"]:
        result["error"] = (
            f"backup {target.backup.label} failed pgbackrest verify, so it is not restored: "
            f"{checked['output'][-500:]} -- pick another with --set (slipway-backup list)")
    return result


def salvage_wal(old: Path, new: Path) -> int:
    """Copy the WAL segments the old cluster had written but maybe not archived into the
    restored cluster's pg_wal: recovery reads pg_wal after the archive runs out, so a restore
    of the latest state after a crash loses nothing that had reached the disk."""
    copied = 0
    src, dst = old / "pg_wal", new / "pg_wal"
    if not src.is_dir() or not dst.is_dir():
        return 0
    for segment in sorted(src.iterdir()):
        if re.fullmatch(r"[0-9A-F]{24}(\.partial)?", segment.name) and not (dst / segment.name).exists():
            shutil.copy2(segment, dst / segment.name)
            shutil.chown(dst / segment.name, "postgres", "postgres")
            copied += 1
    return copied


def cmd_restore(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    target = target_from(cfg, args)
    checked = verify_set(cfg, target.backup.label)
    if not checked["ok"]:
        raise BackupError(f"backup {target.backup.label} failed pgbackrest verify; nothing was "
                          f"changed: {checked['output'][-500:]}")  # fmt: skip
    result: dict[str, Any] = {"target": target.as_dict(), "backup": target.backup.as_dict(),
                              "verify": {"ok": True, "seconds": checked["seconds"]}}  # fmt: skip
    if args.scratch:
        result["scratch"] = scratch_restore(cfg, target.pgbackrest_args(), port=args.port, keep=True)
        result["connect"] = (f"runuser -u postgres -- psql -h {cfg.scratch_dir / 'run'} "
                             f"-p {args.port} -d {cfg.database}")  # fmt: skip
        result["remove_with"] = "slipway-backup drop-scratch"
        result["ok"] = True
        return result
    if not args.confirm:
        raise BackupError("a restore over the live database needs --confirm")
    started = now()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = cfg.data_dir.with_name(f"{cfg.data_dir.name}.before-restore-{stamp}")
    log(f"stopping {cfg.unit}")
    run(["systemctl", "stop", cfg.unit], user=None)
    cfg.data_dir.rename(aside)  # the old cluster is kept whole, nothing is lost
    try:
        cfg.data_dir.mkdir(mode=0o700)
        shutil.chown(cfg.data_dir, "postgres", "postgres")
        log(f"restoring {target.backup.label} ({target.kind}) into {cfg.data_dir}")
        pgbackrest(cfg, "restore", f"--process-max={cfg.process_max}", *target.pgbackrest_args())
        if target.kind == "latest":
            result["wal_salvaged"] = salvage_wal(aside, cfg.data_dir)
        run(["systemctl", "start", cfg.unit], user=None)
        wait_promoted(cfg, port=cfg.pg_port, host=None, deadline_s=3600)
    except (BackupError, OSError, subprocess.TimeoutExpired) as exc:
        failed = cfg.data_dir.with_name(f"{cfg.data_dir.name}.failed-restore-{stamp}")
        run(["systemctl", "stop", cfg.unit], user=None, check=False)
        if cfg.data_dir.exists():
            cfg.data_dir.rename(failed)
        aside.rename(cfg.data_dir)
        run(["systemctl", "start", cfg.unit], user=None, check=False)
        raise BackupError(f"the restore failed and the previous cluster was put back and started "
                          f"(the failed attempt is in {failed}): {exc}") from exc  # fmt: skip
    rows = psql(cfg, "SELECT timeline_id FROM pg_control_checkpoint()", database="postgres")
    result.update(ok=True, seconds=round(now() - started, 1), previous_cluster=str(aside),
                  timeline=int(rows[0][0]) if rows else None,
                  remove_previous_with=f"rm -rf {aside}")  # fmt: skip
    return result


def cmd_drop_scratch(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    return {"ok": True, "removed": drop_scratch(cfg), "path": str(cfg.scratch_dir)}


def cmd_dump(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """pg_dump -Fc of the app database into dump_dir, keeping dump_keep files: a logical copy
    to move data elsewhere, not the way to restore this cluster."""
    if cfg.dump_dir is None:
        raise BackupError("logical exports are off: set postgresql_backup_dump_enabled")
    cfg.dump_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(cfg.dump_dir, "postgres", "postgres")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = cfg.dump_dir / f"{cfg.database}-{stamp}.dump"
    started = now()
    run(["pg_dump", "-p", str(cfg.pg_port), "-Fc", "-f", str(path), cfg.database])
    dumps = sorted(cfg.dump_dir.glob(f"{cfg.database}-*.dump"))
    for old in dumps[: max(0, len(dumps) - cfg.dump_keep)]:
        old.unlink()
    return {"ok": True, "path": str(path), "bytes": path.stat().st_size,
            "seconds": round(now() - started, 1)}  # fmt: skip


def cmd_metrics(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    return {"ok": True, "metrics": write_metrics(cfg, State(cfg))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slipway-backup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="back up now, then verify and restore-test it")
    b.add_argument("--type", choices=BACKUP_TYPES, default="full")
    b.add_argument("--no-verify", dest="verify", action="store_false")
    v = sub.add_parser("verify", help="pgbackrest verify and a scratch restore of a set (latest)")
    v.add_argument("--set")
    sub.add_parser("list", help="backups and the recovery window")
    for name in ("check-target", "restore"):
        t = sub.add_parser(name)
        which = t.add_mutually_exclusive_group(required=True)
        which.add_argument("--latest", action="store_true")
        which.add_argument("--set")
        which.add_argument("--time")
        if name == "restore":
            where = t.add_mutually_exclusive_group(required=True)
            where.add_argument("--live", action="store_true", help="over the live cluster")
            where.add_argument("--scratch", action="store_true", help="into a new cluster beside it")
            t.add_argument("--confirm", action="store_true", help="needed with --live")
            t.add_argument("--port", type=int, default=None, help="the scratch cluster's port")
    sub.add_parser("drop-scratch", help="stop and remove the scratch cluster")
    sub.add_parser("dump", help="pg_dump export of the app database")
    sub.add_parser("metrics", help="write the node_exporter textfile")
    return p


COMMANDS = {"backup": cmd_backup, "verify": cmd_verify, "list": cmd_list,
            "check-target": cmd_check_target, "restore": cmd_restore,
            "drop-scratch": cmd_drop_scratch, "dump": cmd_dump, "metrics": cmd_metrics}  # fmt: skip
LOCKED = {"backup", "verify", "restore", "drop-scratch", "dump"}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = Config.load()
        if getattr(args, "port", 0) is None:
            args.port = cfg.scratch_port
        with exclusive(cfg) if args.command in LOCKED else contextlib.nullcontext():
            result = COMMANDS[args.command](cfg, args)
    except BackupError as exc:
        result = {"ok": False, "error": str(exc)}
    print(json.dumps(result, indent=1))
    if not result.get("ok"):
        log(f"FAILED: {result.get('error')}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
