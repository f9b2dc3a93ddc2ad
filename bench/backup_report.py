"""The backup bench's report: its table on stderr and the picture of seconds by size.

bench/backup_bench.py calls these; `python3 bench/backup_report.py RESULT.json` redraws the
picture from a saved result (its `backup` key, or the bench's own JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def table(r: dict[str, Any]) -> None:
    def out(line: str) -> None:
        print(line, file=sys.stderr)

    d, p, q = r["pg_dump_gzip"], r["pgbackrest"], r["ratio"]
    out(f"benchdb {r['database_mb']} MB (cluster {r['cluster_mb']} MB)")
    out(f"{'':<22} {'backup s':>9} {'MB/s':>7} {'size MB':>8} {'restore s':>10} {'MB/s':>7}")
    out(
        f"{'pg_dump | gzip, psql':<22} {d['backup_s']:9.1f} {d['backup_mb_s']:7.1f} "
        f"{d['file_mb']:8.1f} {d['restore_s']:10.1f} {d['restore_mb_s']:7.1f}"
    )
    out(
        f"{'pgBackRest (defaults)':<22} {p['backup_s']:9.1f} {p['backup_mb_s']:7.1f} "
        f"{p['repo_mb']:8.1f} {p['restore_s']:10.1f} {p['restore_mb_s']:7.1f}"
    )
    out(f"{'ratio (dump / pgbr)':<22} {q['backup']:9.2f} {'':>7} {'':>8} {q['restore']:10.2f}")
    out(
        f"goal: {r['goal']}: {'met' if r['goal_met'] else 'NOT met'} "
        f"(pgbackrest verify before the restore, not counted: {p['verify_before_restore_s']} s)"
    )
    out(f"{'compression':<22} {'backup s':>9} {'repo MB':>8}")
    for c in r["compression"]:
        name = f"{c['compress_type']} {c['compress_level']}, process-max {c['process_max']}"
        out(
            f"{name:<22} {c['backup_s']:9.1f} {c['repo_mb']:8.1f}"
            + ("  (default)" if c["default"] else "")
        )
    rp = r["recovery_point"]
    out(
        f"recovery point (committed writes lost; crash {rp['crash_after_wal_switch_s']} s after a "
        f"WAL switch): host lost {rp['host_lost_s']} s ({rp['host_lost_rows_lost']} rows), "
        f"crash with disk kept {rp['crash_disk_kept_s']} s ({rp['crash_disk_kept_rows_lost']} "
        f"rows); archive_timeout {rp['archive_timeout_s']} s; nightly pg_dump up to "
        f"{rp['nightly_dump_s']} s"
    )


def plot_sizes(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """Backup and restore seconds against database size, pg_dump|gzip beside pgBackRest, with
    the ratio written at each point: where pgBackRest's fixed costs stop mattering."""
    mb = [r["database_mb"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, what in ((left, "backup"), (right, "restore")):
        ax.plot(
            mb,
            [r["pg_dump_gzip"][f"{what}_s"] for r in rows],
            "o-",
            label="pg_dump | gzip" if what == "backup" else "gunzip | psql",
        )
        ax.plot(
            mb,
            [r["pgbackrest"][f"{what}_s"] for r in rows],
            "s-",
            label="pgBackRest (zst 3, 2 processes)",
        )
        for r in rows:
            ax.annotate(
                f"{r['ratio'][what]:.2f}x",
                (r["database_mb"], r["pgbackrest"][f"{what}_s"]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=8,
            )
        ax.set_title(f"{what} (ratio: original / pgBackRest; goal 2x)")
        ax.set_xlabel("database MB")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: python3 bench/backup_report.py RESULT.json")
    data = json.loads(Path(args[0]).read_text())
    result = data.get("backup", data)
    out = Path(__file__).resolve().parent / "results" / "backup_by_size.png"
    print(plot_sizes(result["by_size"], out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
