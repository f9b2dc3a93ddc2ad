"""The repository: backups from `pgbackrest info`, restore targets, `pgbackrest verify`."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slipway_backup.common import LABEL_RE, BackupError, Config, iso, now, pgbackrest


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
    references: tuple[str, ...] = ()  # the backups a diff or incr needs (pgBackRest's reference)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "type": self.type,
            "start": iso(self.start),
            "stop": iso(self.stop),
            "seconds": round(self.stop - self.start, 1),
            "repo_bytes": self.size,
            "database_bytes": self.database_size,
            "lsn_stop": self.lsn_stop,
            "error": self.error,
        }


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
                references=tuple(b.get("reference") or ()),
            )
            for b in entry.get("backup", [])
        ]
        archives = entry.get("archive", [])
        wal = {
            "min": archives[0].get("min") if archives else None,
            "max": archives[-1].get("max") if archives else None,
        }
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
    if not re.search(r"\d[T ]\d", cleaned):
        raise BackupError(
            f"the time {text!r} has no time of day: write it as '2026-12-02 10:15:00+00'"
        )
    if re.search(r"\d:\d\d(:\d\d(\.\d+)?)?[+-]\d\d$", cleaned):  # +HH after the time: +HH:00
        cleaned += ":00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError as exc:
        raise BackupError(
            f"cannot read the time {text!r}: write it as '2026-12-02 10:15:00+00'"
        ) from exc
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
        # The newest timeline, always: after an earlier point-in-time restore the backup's own
        # timeline runs on past that point (into what the restore undid), and pgBackRest,
        # given --set, would stay on it.
        args = [f"--set={self.backup.label}"]
        if self.kind != "set":  # pgBackRest refuses a timeline with type=immediate
            args.append("--target-timeline=latest")
        if self.kind == "time":
            assert self.time is not None
            args += [
                "--type=time",
                f"--target={iso(self.time, 'microseconds')}",
                "--target-action=promote",
            ]
        elif self.kind == "set":
            args += ["--type=immediate", "--target-action=promote"]
        # latest: the default type replays every archived WAL segment, then promotes.
        return args

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "set": self.backup.label,
            "time": iso(self.time, "microseconds") if self.time is not None else None,
        }


def choose_target(
    found: list[Backup],
    *,
    latest: bool = False,
    label: str | None = None,
    when: float | None = None,
    at: float | None = None,
) -> Target:
    """The backup a restore starts from: the newest good one, the named one, or the newest
    that finished before the time asked for. Refused with a reason an operator can act on."""
    good = [b for b in found if not b.error]
    if not good:
        raise BackupError("there is no usable backup yet: run `slipway-backup backup --type full`")
    if label is not None:
        if not LABEL_RE.match(label):
            raise BackupError(
                f"{label!r} is not a pgBackRest backup label (see `slipway-backup list`)"
            )
        named = [b for b in good if b.label == label]
        if not named:
            raise BackupError(f"there is no backup {label}; `slipway-backup list` names them")
        return Target("set", named[0])
    if when is not None:
        before = [b for b in good if b.stop <= when]
        if not before:
            raise BackupError(
                f"{iso(when)} is before the oldest backup finished ({iso(good[0].stop)}): "
                "no backup can reach it"
            )
        if when > (at if at is not None else now()):
            raise BackupError(f"{iso(when)} is in the future")
        return Target("time", before[-1], when)
    if latest:
        return Target("latest", good[-1])
    raise BackupError("say what to restore: --latest, --set LABEL or --time TIME")


def verify_set(cfg: Config, label: str, references: Sequence[str] = ()) -> dict[str, Any]:
    """`pgbackrest verify` of one backup set: the checksum of every file in the repository.
    pgBackRest 2.45 exits 0 whatever it finds and, even with --set, reports every backup in
    the repository, so its verbose text is read line by line: the set is good when its own
    line and those of the backups it references say `valid` and no WAL is invalid."""
    started = now()
    proc = pgbackrest(cfg, "verify", f"--set={label}", "--output=text", "--verbose", check=False)
    said = (proc.stdout + proc.stderr).strip()
    problems = judge_verify(proc.stdout, label, references)
    if proc.returncode != 0:
        problems.insert(0, f"pgbackrest verify exited {proc.returncode}")
    return {
        "set": label,
        "ok": not problems,
        "problems": problems,
        "seconds": round(now() - started, 1),
        "output": said[-3000:],
    }


def judge_verify(output: str, label: str, references: Sequence[str] = ()) -> list[str]:
    """What `pgbackrest verify --output=text --verbose` says is wrong with a set, as sentences."""
    status = dict(re.findall(r"^\s*backup: (\S+), status: (\S+?),", output, re.M))
    problems = [
        f"backup {name} is {status[name]}"
        for name in (*references, label)
        if name in status and status[name] != "valid"
    ]
    if label not in status:
        problems.append(f"pgbackrest verify did not report backup {label}")
    for archive, checked, valid in re.findall(
        r"^\s*archiveId: (\S+), total WAL checked: (\d+), total valid WAL: (\d+)", output, re.M
    ):
        if checked != valid:
            problems.append(
                f"{int(checked) - int(valid)} of {checked} WAL segments of {archive} are invalid"
            )
    return problems


# --- Verification by a scratch restore ------------------------------------------------------


def target_from(cfg: Config, args: argparse.Namespace) -> Target:
    found, _ = backups(cfg)
    when = parse_time(args.time) if args.time else None
    return choose_target(found, latest=args.latest, label=args.set, when=when)
