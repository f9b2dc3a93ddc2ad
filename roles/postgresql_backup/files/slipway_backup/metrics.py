"""State of the last runs and the node_exporter textfile."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from slipway_backup.common import BACKUP_TYPES, BackupError, Config, log, now, psql
from slipway_backup.repo import Backup, backups


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
    """Gauges in the text exposition format: each metric's HELP, TYPE and samples together,
    in the order the metrics were first added."""

    groups: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, value: float, help_text: str, **labels: str) -> None:
        group = self.groups.setdefault(name, [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"])
        text = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
        number = format(value, ".15g")
        group.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")

    def text(self) -> str:
        return "".join(line + "\n" for group in self.groups.values() for line in group)


def escape(value: str) -> str:
    """A label value as the exposition format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def archive_status(cfg: Config) -> dict[str, float]:
    """WAL waiting to be archived: segments marked .ready and the age of the oldest, and
    pg_stat_archiver's counters."""
    ready_dir = cfg.data_dir / "pg_wal" / "archive_status"
    ages = (
        [now() - p.stat().st_mtime for p in ready_dir.glob("*.ready")] if ready_dir.is_dir() else []
    )
    out = {"ready": float(len(ages)), "oldest_ready_age": max(ages, default=0.0)}
    rows = psql(
        cfg,
        "SELECT failed_count, coalesce(extract(epoch FROM last_archived_time), 0), "
        "coalesce(extract(epoch FROM last_failed_time), 0) FROM pg_stat_archiver",
        database="postgres",
    )
    if rows:
        out.update(
            failed=float(rows[0][0]), last_archived=float(rows[0][1]), last_failed=float(rows[0][2])
        )
    return out


def render_metrics(
    cfg: Config, state: dict[str, Any], found: list[Backup] | None, archive: dict[str, float] | None
) -> str:
    m = Metrics()
    s = {"stanza": cfg.stanza}
    for kind in BACKUP_TYPES:
        last = state.get(f"backup_{kind}")
        if not last:
            continue
        labels = {**s, "type": kind}
        m.add(
            "slipway_backup_last_run_timestamp_seconds",
            last["finished"],
            "When the last backup of this type finished (success or not).",
            **labels,
        )
        m.add(
            "slipway_backup_last_run_success",
            1 if last["ok"] else 0,
            "1 if the last backup of this type and its verification succeeded.",
            **labels,
        )
        ok = state.get(f"backup_{kind}_ok")
        if ok:
            m.add(
                "slipway_backup_last_success_timestamp_seconds",
                ok["finished"],
                "When the last good backup of this type finished.",
                **labels,
            )
            m.add(
                "slipway_backup_last_duration_seconds",
                ok["backup_seconds"],
                "Seconds the last good backup of this type took (not its verification).",
                **labels,
            )
            m.add(
                "slipway_backup_last_size_bytes",
                ok["repo_bytes"],
                "Bytes the last good backup of this type added to the repository.",
                **labels,
            )
    last_verify = state.get("verify")
    if last_verify:
        m.add(
            "slipway_backup_verify_success",
            1 if last_verify["ok"] else 0,
            "1 if the last verification (pgbackrest verify and scratch restore) passed.",
            **s,
        )
        m.add(
            "slipway_backup_verify_timestamp_seconds",
            last_verify["finished"],
            "When the last verification finished.",
            **s,
        )
    if found is not None:
        good = [b for b in found if not b.error]
        m.add(
            "slipway_backup_repository_backups", len(good), "Usable backups in the repository.", **s
        )
        if good:
            m.add(
                "slipway_backup_oldest_recovery_timestamp_seconds",
                good[0].stop,
                "The earliest point a restore can reach (the oldest backup's end).",
                **s,
            )
    if archive is not None:
        m.add(
            "slipway_backup_wal_ready_segments",
            archive["ready"],
            "WAL segments PostgreSQL has finished but not yet archived.",
            **s,
        )
        m.add(
            "slipway_backup_wal_archive_lag_seconds",
            archive["oldest_ready_age"],
            "Age of the oldest WAL segment waiting to be archived (0: none waiting).",
            **s,
        )
        if "failed" in archive:
            m.add(
                "slipway_backup_wal_archive_failures",
                archive["failed"],
                "archive_command failures since the statistics were reset.",
                **s,
            )
            m.add(
                "slipway_backup_wal_last_archived_timestamp_seconds",
                archive["last_archived"],
                "When the last WAL segment was archived.",
                **s,
            )
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
