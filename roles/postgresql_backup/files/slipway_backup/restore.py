"""Restores over the live cluster: the old one moved aside, put back on failure."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slipway_backup.common import BackupError, Config, log, now, pgbackrest, psql, run
from slipway_backup.repo import target_from, verify_set
from slipway_backup.verify import scratch_restore, wait_promoted


def salvage_wal(old: Path, new: Path) -> int:
    """Copy the WAL segments the old cluster had written but maybe not archived into the
    restored cluster's pg_wal: recovery reads pg_wal after the archive runs out, so a restore
    of the latest state after a crash loses nothing that had reached the disk."""
    copied = 0
    src, dst = old / "pg_wal", new / "pg_wal"
    if not src.is_dir() or not dst.is_dir():
        return 0
    for segment in sorted(src.iterdir()):
        if (
            re.fullmatch(r"[0-9A-F]{24}(\.partial)?|[0-9A-F]{8}\.history", segment.name)
            and not (dst / segment.name).exists()
        ):
            shutil.copy2(segment, dst / segment.name)
            shutil.chown(dst / segment.name, "postgres", "postgres")
            copied += 1
    return copied


def archive_now(cfg: Config) -> bool:
    """`pgbackrest check`: switch the WAL and wait until it (and the timeline history before it)
    is in the repository. False when the live cluster is down or archiving fails."""
    try:
        pgbackrest(cfg, "check")
    except BackupError as exc:
        log(f"the archive may not hold the last moments: {exc}")
        return False
    return True


def cmd_restore(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    if not args.scratch and not args.confirm:
        raise BackupError("a restore over the live database needs --confirm")
    target = target_from(cfg, args)
    checked = verify_set(cfg, target.backup.label, target.backup.references)
    if not checked["ok"]:
        raise BackupError(
            f"backup {target.backup.label} failed pgbackrest verify; nothing was "
            f"changed: {'; '.join(checked['problems'])}"
        )
    result: dict[str, Any] = {
        "target": target.as_dict(),
        "backup": target.backup.as_dict(),
        "verify": {"ok": True, "seconds": checked["seconds"]},
    }
    if args.scratch:
        archive_now(cfg)  # "latest" is then the live database's state a moment ago
        result["scratch"] = scratch_restore(
            cfg, target.pgbackrest_args(), port=args.port, keep=True
        )
        result["connect"] = (
            f"runuser -u postgres -- psql -h {cfg.scratch_dir / 'run'} "
            f"-p {args.port} -d {cfg.database}"
        )
        result["remove_with"] = "slipway-backup drop-scratch"
        result["ok"] = True
        return result
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
        wait_promoted(
            cfg,
            port=cfg.pg_port,
            host=None,
            data_dir=cfg.data_dir,
            log_file=cfg.log_file,
            deadline_s=3600,
        )
    except (BackupError, OSError, subprocess.TimeoutExpired) as exc:
        failed = cfg.data_dir.with_name(f"{cfg.data_dir.name}.failed-restore-{stamp}")
        run(["systemctl", "stop", cfg.unit], user=None, check=False)
        if cfg.data_dir.exists():
            cfg.data_dir.rename(failed)
        aside.rename(cfg.data_dir)
        run(["systemctl", "start", cfg.unit], user=None, check=False)
        raise BackupError(
            f"the restore failed and the previous cluster was put back and started "
            f"(the failed attempt is in {failed}): {exc}"
        ) from exc
    # The new timeline's history must be in the repository before anyone restores again:
    # without it a restore of the latest state follows the old timeline past the target.
    result["archived"] = archive_now(cfg)
    rows = psql(cfg, "SELECT timeline_id FROM pg_control_checkpoint()", database="postgres")
    result.update(
        ok=True,
        seconds=round(now() - started, 1),
        previous_cluster=str(aside),
        timeline=int(rows[0][0]) if rows else None,
        remove_previous_with=f"rm -rf {aside}",
    )
    return result
