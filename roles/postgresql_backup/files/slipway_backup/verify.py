"""Verification by a restore: a scratch cluster replayed to a restore point taken on the live
database with the compared tables locked, and its tables compared with the live ones."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slipway_backup.common import (
    CHECKSUM_OPTIONS,
    BackupError,
    Config,
    iso,
    now,
    pgbackrest,
    psql,
    run,
)
from slipway_backup.repo import backups, choose_target, verify_set


def tables(cfg: Config, *, port: int | None = None, host: str | None = None) -> list[str]:
    if cfg.verify_tables:
        return list(cfg.verify_tables)
    rows = psql(
        cfg,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
        "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
        "ORDER BY 1",
        port=port,
        host=host,
    )
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
    script = (
        f"SET lock_timeout = '{cfg.verify_lock_timeout_s}s';\n"
        "BEGIN;\n"
        + (
            f"LOCK TABLE {', '.join(names)} IN SHARE MODE;\n{checksum_sql(names)};\n"
            if names
            else ""
        )
        + f"SELECT 'restore point', pg_create_restore_point('{name}'), '';\n"
        "COMMIT;\n"
    )
    try:
        rows = psql(cfg, script, options=CHECKSUM_OPTIONS, script=True)
    except BackupError as exc:
        raise BackupError(
            f"could not take the verification point on the live database: {exc} "
            f"(the tables stayed locked at most {cfg.verify_lock_timeout_s} s; a long writer "
            "holds them: try again, or raise postgresql_backup_verify_lock_timeout)"
        ) from exc
    pgbackrest(cfg, "check")  # switches the WAL and waits until the point is archived
    return {r[0]: r[1:] for r in rows if r[0] != "restore point"}


def write_scratch_config(cfg: Config, path: Path, port: int) -> None:
    """The restored data directory has no postgresql.conf or pg_hba.conf (Debian keeps them in
    /etc/postgresql): a small one of its own, listening on a Unix socket only."""
    run_dir = path / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(run_dir, "postgres", "postgres")
    settings = {
        "port": str(port),
        "listen_addresses": "''",
        "unix_socket_directories": f"'{run_dir}'",
        "shared_buffers": "'64MB'",
        "max_connections": "20",
        "archive_mode": "off",
        "ssl": "off",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "logging_collector": "off",
        "log_destination": "'stderr'",
        "hot_standby": "off",
    }
    (path / "postgresql.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    (path / "pg_hba.conf").write_text("local all postgres peer\n")
    (path / "pg_ident.conf").write_text("")
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        shutil.chown(path / name, "postgres", "postgres")


def pg_ctl(cfg: Config, path: Path, *args: str, timeout: float = 3600) -> None:
    run([str(cfg.bin_dir / "pg_ctl"), "-D", str(path), *args], timeout=timeout)


def wait_promoted(
    cfg: Config, *, port: int, host: str | None, data_dir: Path, log_file: Path, deadline_s: float
) -> None:
    """Wait until the cluster on port has finished recovery and accepts writes; fail at once,
    with the end of its log, if its postmaster is gone (a recovery that stopped)."""
    limit = now() + deadline_s
    while True:
        if not (data_dir / "postmaster.pid").exists():
            said = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else ""
            raise BackupError(f"PostgreSQL in {data_dir} stopped during recovery: {said}")
        try:
            rows = psql(
                cfg, "SELECT pg_is_in_recovery()", database="postgres", port=port, host=host
            )
            if rows and rows[0][0] == "f":
                return
        except BackupError:
            pass
        if now() > limit:
            raise BackupError(
                f"the cluster on port {port} was still in recovery after {deadline_s:.0f} s"
            )
        time.sleep(0.5)


def scratch_spool(path: Path) -> Path:
    """The scratch cluster's own pgBackRest spool, beside its data directory. A restore empties
    the stanza's archive spool before it starts; with the configured spool that is the live
    cluster's async archive-push queue (a segment pushed meanwhile made the restore fail,
    "Directory not empty"), and the scratch cluster's archive-get would queue WAL there too."""
    return path.with_name(f"{path.name}.spool")


def scratch_restore(
    cfg: Config, target_args: list[str], *, port: int, keep: bool, path: Path | None = None
) -> dict[str, Any]:
    """Restore into a throwaway cluster beside the live one and start it on `port`."""
    path = path or cfg.scratch_dir
    spool = scratch_spool(path)
    drop_scratch(cfg, path, stop_mode="immediate")  # what an earlier run left
    for made in (path, spool):
        made.mkdir(mode=0o700, parents=True)
        shutil.chown(made, "postgres", "postgres")
    started = now()
    pgbackrest(
        cfg,
        "restore",
        f"--pg1-path={path}",
        f"--spool-path={spool}",  # also in the restore_command pgBackRest writes for it
        "--archive-mode=off",
        f"--process-max={cfg.process_max}",
        *target_args,
    )
    write_scratch_config(cfg, path, port)
    restored = now()
    try:
        pg_ctl(cfg, path, "start", "-w", "-t", "3600", "-l", str(path / "startup.log"))
    except BackupError as exc:
        said = (
            (path / "startup.log").read_text(errors="replace")
            if (path / "startup.log").exists()
            else ""
        )
        raise BackupError(f"the restored cluster did not start: {said[-1500:]}") from exc
    wait_promoted(
        cfg,
        port=port,
        host=str(path / "run"),
        data_dir=path,
        log_file=path / "startup.log",
        deadline_s=3600,
    )
    return {
        "path": str(path),
        "port": port,
        "socket_dir": str(path / "run"),
        "restore_seconds": round(restored - started, 1),
        "recovery_seconds": round(now() - restored, 1),
        "kept": keep,
    }


def drop_scratch(cfg: Config, path: Path | None = None, *, stop_mode: str = "fast") -> bool:
    """Stop and remove a scratch cluster and its spool; whether the cluster was there."""
    path = path or cfg.scratch_dir
    spool = scratch_spool(path)
    existed = path.exists()
    if existed:
        if (path / "postmaster.pid").exists():
            with contextlib.suppress(BackupError):
                pg_ctl(cfg, path, "stop", "-m", stop_mode, timeout=120)
        shutil.rmtree(path)
    if spool.exists():
        shutil.rmtree(spool)
    return existed


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
    result["verify"] = verify_set(cfg, target.backup.label, target.backup.references)
    if not result["verify"]["ok"]:
        said = "; ".join(result["verify"]["problems"])
        result.update(ok=False, error=f"pgbackrest verify: {said}")
        return result
    if cfg.verify_restore:
        point = f"slipway-verify-{int(now())}"
        live = live_point(cfg, point)
        args = [
            f"--set={target.backup.label}",
            "--target-timeline=latest",  # the restore point is on the newest timeline
            "--type=name",
            f"--target={point}",
            "--target-action=promote",
        ]
        try:
            result["scratch"] = scratch_restore(cfg, args, port=cfg.scratch_port, keep=False)
            restored = (
                {
                    r[0]: r[1:]
                    for r in psql(
                        cfg,
                        checksum_sql(list(live)),
                        port=cfg.scratch_port,
                        host=str(cfg.scratch_dir / "run"),
                        options=CHECKSUM_OPTIONS,
                    )
                }
                if live
                else {}
            )
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
