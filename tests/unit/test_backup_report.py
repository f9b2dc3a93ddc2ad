"""bench/backup_report.py on a result shaped like backup_bench's: the table's figures and the
picture of seconds by size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.backup_report import plot_sizes, table


def row(mb: float, dump: float, load: float, backup: float, restore: float) -> dict[str, Any]:
    return {
        "database_mb": mb,
        "pg_dump_gzip": {
            "backup_s": dump,
            "backup_mb_s": mb / dump,
            "file_mb": mb / 9,
            "restore_s": load,
            "restore_mb_s": mb / load,
        },
        "pgbackrest": {
            "backup_s": backup,
            "backup_mb_s": mb / backup,
            "repo_mb": mb / 7,
            "restore_s": restore,
            "restore_mb_s": mb / restore,
            "verify_before_restore_s": 0.4,
        },
        "ratio": {"backup": round(dump / backup, 2), "restore": round(load / restore, 2)},
    }


def test_table_prints_the_figures_and_the_goal(capsys: pytest.CaptureFixture[str]) -> None:
    """The table names the sizes, both methods' seconds, the ratios and whether the goal holds."""
    result = {
        **row(978.8, 11.7, 15.9, 5.7, 5.4),
        "cluster_mb": 1007.8,
        "goal": "backup and restore each >= 2x",
        "goal_met": True,
        "compression": [
            {
                "compress_type": "zst",
                "compress_level": 3,
                "process_max": 2,
                "backup_s": 5.7,
                "repo_mb": 147.4,
                "default": True,
            }
        ],
        "recovery_point": {
            "crash_after_wal_switch_s": 40.3,
            "host_lost_s": 40.44,
            "host_lost_rows_lost": 355,
            "crash_disk_kept_s": 0.0,
            "crash_disk_kept_rows_lost": 0,
            "archive_timeout_s": 60,
            "nightly_dump_s": 86400,
        },
    }
    table(result)
    err = capsys.readouterr().err
    assert "benchdb 978.8 MB (cluster 1007.8 MB)" in err
    assert "2.05" in err and "2.94" in err
    assert "backup and restore each >= 2x: met" in err
    assert "zst 3, process-max 2" in err and "(default)" in err
    assert "host lost 40.44 s (355 rows)" in err


def test_plot_sizes_writes_a_png(tmp_path: Path) -> None:
    """One PNG for every size measured (here: the ratio turning between 100 MB and 1 GB)."""
    out = plot_sizes(
        [row(107.2, 1.4, 1.7, 4.8, 3.0), row(978.8, 11.7, 15.9, 5.7, 5.4)], tmp_path / "sizes.png"
    )
    assert out == tmp_path / "sizes.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
