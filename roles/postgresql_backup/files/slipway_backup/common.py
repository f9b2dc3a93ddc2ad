"""Settings, errors and running pgBackRest, psql and pg_ctl as postgres."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONFIG_PATH = Path(os.environ.get("SLIPWAY_BACKUP_CONFIG", "/etc/slipway-backup.json"))
BACKUP_TYPES = ("full", "diff", "incr")
# pgBackRest's backup labels: 20261202-101500F, 20261202-101500F_20261202-111500D (or I).
LABEL_RE = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
# Settings for a checksum session: the same text for a row on both clusters.
CHECKSUM_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3 -c IntervalStyle=iso_8601"
)


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

    @property
    def log_file(self) -> Path:
        """Debian's log of the cluster (pg_ctlcluster writes it)."""
        return Path(f"/var/log/postgresql/postgresql-{self.pg_version}-{self.data_dir.name}.log")

    @classmethod
    def load(cls, path: Path = CONFIG_PATH) -> Config:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BackupError(
                f"cannot read {path}: {exc}; converge the postgresql_backup role"
            ) from exc
        try:
            for key in ("data_dir", "bin_dir", "state_dir", "metrics_path", "scratch_dir"):
                raw[key] = Path(raw[key])
            raw["dump_dir"] = Path(raw["dump_dir"]) if raw.get("dump_dir") else None
            raw["verify_tables"] = tuple(raw.get("verify_tables") or ())
            return cls(**raw)
        except (KeyError, TypeError) as exc:
            raise BackupError(
                f"{path} is incomplete or has unknown settings ({exc}); converge the "
                "postgresql_backup role"
            ) from exc


def log(message: str) -> None:
    print(f"slipway-backup: {message}", file=sys.stderr, flush=True)


def now() -> float:
    return time.time()


def iso(ts: float, timespec: str = "seconds") -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec)


# --- Running things as postgres -------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    user: str | None = "postgres",
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (as `user` through runuser); raise BackupError with its output on failure."""
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    proc = subprocess.run(
        full,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd="/",
    )
    if check and proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise BackupError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {said}")
    return proc


def pgbackrest(cfg: Config, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["pgbackrest", f"--stanza={cfg.stanza}", *args], check=check)


def psql(
    cfg: Config,
    sql: str,
    *,
    database: str | None = None,
    port: int | None = None,
    host: str | None = None,
    options: str | None = None,
    script: bool = False,
) -> list[list[str]]:
    """Rows of a query (tab-separated fields), as postgres over the Unix socket. With script,
    sql is a psql script given on stdin (several statements, each one's rows)."""
    argv = [
        "psql",
        "-X",
        "-A",
        "-t",
        "-q",
        "-F",
        "\t",
        "-v",
        "ON_ERROR_STOP=1",
        "-p",
        str(port or cfg.pg_port),
        "-d",
        database or cfg.database,
    ]
    if host:
        argv += ["-h", host]
    env = {"PGOPTIONS": options} if options else None
    proc = run(argv, env=env, stdin=sql) if script else run([*argv, "-c", sql], env=env)
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


# --- Backups: info ------------------------------------------------------------------------
