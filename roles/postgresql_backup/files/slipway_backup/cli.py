"""The slipway-backup command line: one JSON object on stdout per command."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from slipway_backup.common import BACKUP_TYPES, BackupError, Config, iso, log, now, pgbackrest, run
from slipway_backup.metrics import State, write_metrics
from slipway_backup.repo import backups, target_from, verify_set
from slipway_backup.restore import cmd_restore
from slipway_backup.verify import drop_scratch, verify


@contextlib.contextmanager
def exclusive(cfg: Config) -> Iterator[None]:
    """One backup, verification or restore at a time on this host."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.state_dir / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BackupError(
                "another slipway-backup command is running on this host; wait for it"
            ) from exc
        yield


def cmd_backup(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    state = State(cfg)
    started = now()
    kind = args.type
    result: dict[str, Any] = {"type": kind, "started": iso(started), "ok": False}
    last_verify = state.data.get("verify") or {}
    if kind != "full" and last_verify.get("ok") is False:
        # A diff or incr stands on the backups before it; after a failed verification those
        # may be damaged, so this one is taken as a full (and the schedule goes on from it).
        kind = result["type"] = "full"
        result["promoted"] = f"{args.type} taken as full: the last verification failed"
        log(result["promoted"])
    try:
        log(f"{kind} backup of stanza {cfg.stanza}")
        pgbackrest(cfg, "backup", f"--type={kind}")
        backup_done = now()
        found, _ = backups(cfg)
        newest = found[-1]
        result.update(
            backup=newest.as_dict(),
            backup_seconds=round(backup_done - started, 1),
            repo_bytes=newest.size,
            repository="local",
        )
        if args.verify:
            log(f"verifying {newest.label}")
            result["verification"] = verify(cfg, newest.label)
            state.record(
                "verify",
                {"ok": result["verification"]["ok"], "finished": now(), "set": newest.label},
            )
            if not result["verification"]["ok"]:
                raise BackupError(result["verification"]["error"])
        result["ok"] = True
    except BackupError as exc:
        result["error"] = str(exc)
    result["finished"] = now()
    result["seconds"] = round(result["finished"] - started, 1)
    state.record(f"backup_{kind}", {k: result.get(k) for k in ("ok", "finished", "error")})
    if result["ok"]:
        state.record(
            f"backup_{kind}_ok",
            {k: result[k] for k in ("finished", "backup_seconds", "repo_bytes")},
        )
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
    return {
        "ok": True,
        "stanza": cfg.stanza,
        "backups": [b.as_dict() for b in found],
        "wal": wal,
        "recoverable_from": iso(good[0].stop) if good else None,
        "last_verify": state.get("verify"),
    }


def cmd_check_target(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """What a restore would start from, and pgbackrest verify of that set: run before any
    unit is stopped, so a damaged backup is refused while the service still runs."""
    target = target_from(cfg, args)
    checked = verify_set(cfg, target.backup.label, target.backup.references)
    result = {
        "ok": checked["ok"],
        "target": target.as_dict(),
        "backup": target.backup.as_dict(),
        "verify": checked,
    }
    if not checked["ok"]:
        result["error"] = (
            f"backup {target.backup.label} failed pgbackrest verify, so it is not restored: "
            f"{'; '.join(checked['problems'])} -- pick another with --set (slipway-backup list)"
        )
    return result


def cmd_drop_scratch(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    return {"ok": True, "removed": drop_scratch(cfg), "path": str(cfg.scratch_dir)}


def cmd_dump(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """pg_dump -Fc of the app database into dump_dir, keeping dump_keep files: a logical copy
    to move data elsewhere, not the way to restore this cluster."""
    if cfg.dump_dir is None:
        raise BackupError("logical exports are off: set postgresql_backup_dump_enabled")
    # Every row of the app's database is in these files: postgres and root only.
    cfg.dump_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.dump_dir.chmod(0o700)
    shutil.chown(cfg.dump_dir, "postgres", "postgres")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = cfg.dump_dir / f"{cfg.database}-{stamp}.dump"
    started = now()
    run(["pg_dump", "-p", str(cfg.pg_port), "-Fc", "-f", str(path), cfg.database])
    path.chmod(0o600)
    dumps = sorted(cfg.dump_dir.glob(f"{cfg.database}-*.dump"))
    for old in dumps[: max(0, len(dumps) - cfg.dump_keep)]:
        old.unlink()
    return {
        "ok": True,
        "path": str(path),
        "bytes": path.stat().st_size,
        "seconds": round(now() - started, 1),
    }


def cmd_metrics(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    return {"ok": True, "metrics": write_metrics(cfg, State(cfg))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slipway-backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
            where.add_argument(
                "--scratch", action="store_true", help="into a new cluster beside it"
            )
            t.add_argument("--confirm", action="store_true", help="needed with --live")
            t.add_argument("--port", type=int, default=None, help="the scratch cluster's port")
    sub.add_parser("drop-scratch", help="stop and remove the scratch cluster")
    sub.add_parser("dump", help="pg_dump export of the app database")
    sub.add_parser("metrics", help="write the node_exporter textfile")
    return p


COMMANDS = {
    "backup": cmd_backup,
    "verify": cmd_verify,
    "list": cmd_list,
    "check-target": cmd_check_target,
    "restore": cmd_restore,
    "drop-scratch": cmd_drop_scratch,
    "dump": cmd_dump,
    "metrics": cmd_metrics,
}
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
